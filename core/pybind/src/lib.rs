//! `pymesh._core`: thin PyO3 bindings over `pymesh_engine::Engine`. No logic lives here:
//! each method converts arguments, releases the GIL around the engine call, and maps the
//! engine's error to a typed Python exception.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use pymesh_engine::{Engine, EngineOptions, Error, ErrorKind};

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
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyCore>()?;
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("ApplyError", py.get_type::<ApplyError>())?;
    m.add("BindError", py.get_type::<BindError>())?;
    Ok(())
}
