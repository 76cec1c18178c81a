//! `pymesh._core`: thin PyO3 bindings over `pymesh_engine::Engine`. No logic lives here:
//! each method converts arguments, releases the GIL around the engine call, and maps the
//! engine's error to a typed Python exception.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use pymesh_engine::bench::{self, BenchOptions, BenchResult, BenchTls};
use pymesh_engine::{Engine, EngineOptions, Error, ErrorKind, TapEvent, TapFilter, TapSubscription};

/// The core's allocator. glibc's malloc showed as 5.5% of proxy CPU per new connection
/// (`_int_malloc`, `malloc_consolidate` on every 4 KiB buffer after small frees) and 1.5% per
/// keep-alive request; mimalloc's per-thread free lists suit a worker that allocates and frees
/// on one thread. Only Rust allocations use it; Python keeps its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _core,
    CoreError,
    PyException,
    "The core failed for a reason that is not the caller's input."
);
create_exception!(_core, ApplyError, PyValueError, "A snapshot the core refused; `path` names the field.");
create_exception!(_core, BindError, ApplyError, "A listener address could not be bound.");

fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let exc = match err.kind {
        ErrorKind::Config => ApplyError::new_err(err.to_string()),
        ErrorKind::Bind => BindError::new_err(err.to_string()),
        ErrorKind::Internal => return CoreError::new_err(err.to_string()),
    };
    // Python code reads the field path without parsing the message.
    if let Err(e) = exc.value(py).setattr("path", err.path) {
        return e;
    }
    exc
}

/// One data plane: its own runtime, listeners, clusters and metrics.
#[pyclass(name = "Core", module = "pymesh._core", frozen)]
struct PyCore {
    engine: Engine,
}

#[pymethods]
impl PyCore {
    #[new]
    #[pyo3(signature = (workers=None))]
    fn new(py: Python<'_>, workers: Option<usize>) -> PyResult<Self> {
        let engine = Engine::new(EngineOptions { workers }).map_err(|e| to_py(py, e))?;
        Ok(Self { engine })
    }

    fn apply(&self, py: Python<'_>, snapshot_json: &str) -> PyResult<u64> {
        let text = snapshot_json.to_owned();
        py.detach(|| self.engine.apply_json(&text)).map_err(|e| to_py(py, e))
    }

    fn version(&self) -> u64 {
        self.engine.version()
    }

    fn listeners(&self) -> BTreeMap<String, String> {
        self.engine.listeners().into_iter().map(|(n, a)| (n, a.to_string())).collect()
    }

    fn stats_json(&self, py: Python<'_>) -> String {
        py.detach(|| self.engine.stats_json())
    }

    fn metrics_text(&self, py: Python<'_>) -> String {
        py.detach(|| self.engine.metrics_text())
    }

    #[pyo3(signature = (listen, id=None))]
    fn start_echo(&self, py: Python<'_>, listen: &str, id: Option<&str>) -> PyResult<String> {
        let (listen, id) = (listen.to_owned(), id.map(str::to_owned));
        py.detach(|| self.engine.start_echo(&listen, id.as_deref()))
            .map(|a| a.to_string())
            .map_err(|e| to_py(py, e))
    }

    fn drain(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        let timeout = Duration::try_from_secs_f64(timeout_s).map_err(|_| {
            PyValueError::new_err(format!("timeout_s must be a non-negative number, not {timeout_s}"))
        })?;
        Ok(py.detach(|| self.engine.drain(timeout)))
    }

    fn active_connections(&self) -> i64 {
        self.engine.active_connections()
    }

    /// Listen to the live tap; every filter given must hold.
    #[pyo3(signature = (*, listener=None, route=None, cluster=None, status=None, path_prefix=None))]
    fn tap(
        &self,
        py: Python<'_>,
        listener: Option<String>,
        route: Option<String>,
        cluster: Option<String>,
        status: Option<String>,
        path_prefix: Option<String>,
    ) -> PyResult<PyTap> {
        let filter = TapFilter { listener, route, cluster, status, path_prefix };
        let sub = self.engine.tap(&filter).map_err(|e| to_py(py, e))?;
        Ok(PyTap { sub: Mutex::new(Some(sub)) })
    }

    fn tap_subscribers(&self) -> usize {
        self.engine.tap_subscribers()
    }
}

/// One subscription to the live tap; `close()` (or garbage collection) leaves.
#[pyclass(name = "Tap", module = "pymesh._core", frozen)]
struct PyTap {
    sub: Mutex<Option<TapSubscription>>,
}

#[pymethods]
impl PyTap {
    /// The next request record as a dict, waiting up to `timeout_s` with the GIL released;
    /// None when none came in time (or the tap is closed).
    fn next<'py>(&self, py: Python<'py>, timeout_s: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let timeout = Duration::try_from_secs_f64(timeout_s).map_err(|_| {
            PyValueError::new_err(format!("timeout_s must be a non-negative number, not {timeout_s}"))
        })?;
        let event = py.detach(|| {
            let sub = self.sub.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sub.as_ref().and_then(|s| s.next(timeout))
        });
        event.map(|e| event_dict(py, &e)).transpose()
    }

    /// Stop listening (idempotent).
    fn close(&self, py: Python<'_>) {
        let sub = py.detach(|| self.sub.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        drop(sub);
    }
}

fn event_dict<'py>(py: Python<'py>, e: &TapEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("time", &e.time)?;
    d.set_item("listener", &e.listener)?;
    d.set_item("route", &e.route)?;
    d.set_item("cluster", &e.cluster)?;
    d.set_item("method", &e.method)?;
    d.set_item("authority", &e.authority)?;
    d.set_item("path", &e.path)?;
    d.set_item("status", e.status)?;
    d.set_item("flags", &e.flags)?;
    d.set_item("duration_ms", e.duration_ms)?;
    d.set_item("endpoint", &e.endpoint)?;
    d.set_item("attempts", e.attempts)?;
    d.set_item("trace_id", &e.trace_id)?;
    d.set_item("request_id", &e.request_id)?;
    Ok(d)
}

/// Answer why the core would refuse an access-log text template, or None if it compiles.
#[pyfunction]
fn access_log_template_error(template: &str) -> Option<String> {
    pymesh_engine::check_access_log_template(template).err()
}

/// The fields of an access-log line, by the name templates and JSON lines use.
#[pyfunction]
fn access_log_fields() -> Vec<&'static str> {
    pymesh_engine::access_log_fields().to_vec()
}

/// Run the load generator; answers the result as a dict (see `pymesh.bench.BenchResult`).
#[pyfunction]
#[pyo3(signature = (
    url, *, connections=10, threads=1, duration_s=None, requests=None, rate=None,
    method="GET".to_owned(), headers=Vec::new(), body=Vec::new(), timeout_s=10.0, warmup_s=0.0,
    progress=false, http2=false, streams=1, cacert=None, insecure=false, cert=None, key=None,
))]
#[allow(clippy::too_many_arguments)]
fn run_bench<'py>(
    py: Python<'py>,
    url: String,
    connections: usize,
    threads: usize,
    duration_s: Option<f64>,
    requests: Option<u64>,
    rate: Option<f64>,
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_s: f64,
    warmup_s: f64,
    progress: bool,
    http2: bool,
    streams: usize,
    cacert: Option<String>,
    insecure: bool,
    cert: Option<String>,
    key: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(PyValueError::new_err("cert: give both cert and key, or neither")),
    };
    let secs = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| PyValueError::new_err(format!("{name}: must be a non-negative number of seconds")))
    };
    let opts = BenchOptions {
        url,
        connections,
        threads,
        duration: duration_s.map(|d| secs("duration", d)).transpose()?,
        requests,
        rate,
        method,
        headers,
        body,
        timeout: secs("timeout", timeout_s)?,
        warmup: secs("warmup", warmup_s)?,
        progress,
        http2,
        streams,
        tls: BenchTls { ca: cacert, insecure, cert: client_cert },
    };
    let result = py.detach(|| bench::run(&opts)).map_err(|e| PyValueError::new_err(e.to_string()))?;
    result_dict(py, &result)
}

/// Answer why the core would refuse a route regex, or None if it compiles.
#[pyfunction]
fn regex_error(pattern: &str) -> Option<String> {
    pymesh_engine::check_regex(pattern).err()
}

fn result_dict<'py>(py: Python<'py>, r: &BenchResult) -> PyResult<Bound<'py, PyDict>> {
    let errors = PyDict::new(py);
    errors.set_item("connect", r.errors.connect)?;
    errors.set_item("timeout", r.errors.timeout)?;
    errors.set_item("reset", r.errors.reset)?;
    errors.set_item("protocol", r.errors.protocol)?;
    let status = PyDict::new(py);
    for (code, n) in &r.status {
        status.set_item(code.to_string(), n)?;
    }
    let l = &r.latency_us;
    let latency = PyDict::new(py);
    for (k, v) in
        [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p999", l.p999), ("p9999", l.p9999), ("max", l.max)]
    {
        latency.set_item(k, v)?;
    }
    latency.set_item("mean", l.mean)?;
    let out = PyDict::new(py);
    out.set_item("requests", r.requests)?;
    out.set_item("errors", errors)?;
    out.set_item("duration_s", r.duration_s)?;
    out.set_item("rps", r.rps)?;
    out.set_item("bytes", r.bytes)?;
    out.set_item("status", status)?;
    out.set_item("latency_us", latency)?;
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyCore>()?;
    m.add_function(wrap_pyfunction!(run_bench, m)?)?;
    m.add_function(wrap_pyfunction!(regex_error, m)?)?;
    m.add_class::<PyTap>()?;
    m.add_function(wrap_pyfunction!(access_log_template_error, m)?)?;
    m.add_function(wrap_pyfunction!(access_log_fields, m)?)?;
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("ApplyError", py.get_type::<ApplyError>())?;
    m.add("BindError", py.get_type::<BindError>())?;
    Ok(())
}
