use super::*;
use crate::config::{
    ClusterProtocol, ClusterSpec, EndpointSpec, LbKind, MatchSpec, RedirectSpec, RewriteSpec,
};
use crate::http::actions::tests_support::header_actions;
use crate::http::actions::{ForwardActions, HeaderActions, Local};
use crate::http::client::{PoolSettings, Upstream};
use http::header::LOCATION;
use http::uri::PathAndQuery;
use serde_json::{json, Value};
use std::time::Duration;

// === helpers ===

fn target(cluster: &str) -> Arc<Target> {
    let spec = ClusterSpec {
        name: cluster.into(),
        endpoints: vec![EndpointSpec::Address("127.0.0.1:1".into())],
        lb: LbKind::RoundRobin,
        connect_timeout_ms: 1000,
        max_idle_per_endpoint: 1,
        idle_timeout_ms: 1000,
        hash_on: None,
        health_check: None,
        panic_threshold_percent: 50,
        protocol: ClusterProtocol::Http1,
        tls: None,
        policy: None,
    };
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        max_idle_per_endpoint: 1,
        idle_timeout: Duration::from_secs(1),
        protocol: ClusterProtocol::Http1,
        max_connections: None,
    };
    let upstream = Arc::new(Upstream::new(settings, None, Arc::default()));
    Arc::new(Target {
        cluster: Arc::new(
            Cluster::compile(&spec, "clusters.0", upstream, None, &crate::metrics::Metrics::default())
                .unwrap(),
        ),
        counters: Arc::default(),
        route_stats: Arc::default(),
        actions: Arc::default(),
        policy: None,
    })
}

fn weighted(to: &[(&str, u32)]) -> Weighted {
    Weighted::new(to.iter().map(|(c, w)| (*w, target(c))).collect())
}

/// A match spec from the fields given, the others at their snapshot defaults.
fn match_spec(fields: Value) -> MatchSpec {
    let mut spec = json!({"host": null, "path": null, "path_prefix": null, "path_regex": null,
                          "methods": [], "headers": [], "query": []});
    for (k, v) in fields.as_object().unwrap() {
        spec[k] = v.clone();
    }
    if spec["path"].is_null() && spec["path_regex"].is_null() && spec["path_prefix"].is_null() {
        spec["path_prefix"] = json!("/");
    }
    serde_json::from_value(spec).unwrap()
}

fn compiled(fields: Value) -> RouteMatch {
    RouteMatch::compile(&match_spec(fields), "m").unwrap()
}

fn compile_err(fields: Value) -> Error {
    RouteMatch::compile(&match_spec(fields), "m").unwrap_err()
}

fn route(name: &str, fields: Value, to: &[(&str, u32)]) -> Route {
    Route::new(name.into(), compiled(fields), RouteAction::Forward(weighted(to)))
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn with_headers(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap()
}

fn holds(fields: Value, req: &Request<()>) -> bool {
    compiled(fields).matches(req)
}

// === precedence and weights ===

#[test]
fn first_matching_route_wins_in_config_order() {
    let router = Router::new(vec![
        route("exact", json!({"path": "/api/health"}), &[("a", 1)]),
        route(
            "canary",
            json!({"path_prefix": "/api", "headers": [{"name": "x-canary", "exact": "1",
                                "regex": null, "present": null}]}),
            &[("c", 1)],
        ),
        route("api", json!({"path_prefix": "/api"}), &[("b", 1)]),
        route("all", json!({"path_prefix": "/"}), &[("c", 1)]),
    ]);
    let name = |req: Request<()>| router.find(&req).map(|r| r.name.to_string());
    assert_eq!(name(get("/api/health")).as_deref(), Some("exact"));
    assert_eq!(name(with_headers("GET", "/api/health", &[("x-canary", "1")])).as_deref(), Some("exact"));
    assert_eq!(name(with_headers("GET", "/api/x", &[("x-canary", "1")])).as_deref(), Some("canary"));
    assert_eq!(name(get("/api/health/x")).as_deref(), Some("api"));
    assert_eq!(name(get("/apix")).as_deref(), Some("api"));
    assert_eq!(name(get("/")).as_deref(), Some("all"));
    assert_eq!(name(get("/other?q=1")).as_deref(), Some("all"));
}

#[test]
fn no_route_when_nothing_matches() {
    let router = Router::new(vec![route("api", json!({"path_prefix": "/api"}), &[("b", 1)])]);
    assert!(router.find(&get("/")).is_none());
    assert!(router.find(&get("/ap")).is_none());
    assert!(Router::default().find(&get("/")).is_none());
}

#[test]
fn weighted_split_covers_the_weight_line_exactly() {
    let w = weighted(&[("v1", 90), ("none", 0), ("v2", 10)]);
    let mut counts = std::collections::HashMap::new();
    for at in 0..100 {
        *counts.entry(w.pick_at(at).cluster.name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("v1"), Some(&90));
    assert_eq!(counts.get("v2"), Some(&10));
    assert_eq!(counts.get("none"), None);
}

#[test]
fn weighted_split_by_random_choice_lands_near_its_weights() {
    let w = weighted(&[("v1", 90), ("v2", 10)]);
    let v2 = (0..20_000).filter(|_| &*w.pick().cluster.name == "v2").count();
    // 10% of 20000 is 2000; the standard deviation is ~42, so ±300 is far outside chance.
    assert!((1700..2300).contains(&v2), "v2 got {v2}");
}

// === paths ===

#[test]
fn path_exact_prefix_and_regex() {
    assert!(holds(json!({"path": "/a"}), &get("/a?x=1")));
    assert!(!holds(json!({"path": "/a"}), &get("/a/")));
    assert!(holds(json!({"path_prefix": "/a"}), &get("/ab")));
    assert!(!holds(json!({"path_prefix": "/a/"}), &get("/a")));
    let re = json!({"path_regex": "/v[0-9]+/.*"});
    assert!(holds(re.clone(), &get("/v2/users")));
    assert!(holds(re.clone(), &get("/v2/?q=1")), "the query is not part of the path");
    assert!(!holds(re.clone(), &get("/x/v2/users")), "anchored at the start");
    assert!(!holds(json!({"path_regex": "/v[0-9]+"}), &get("/v2/users")), "anchored at the end");
    assert!(holds(json!({"path_regex": "^/v[0-9]+$"}), &get("/v22")), "explicit anchors are harmless");
    assert!(holds(json!({"path_regex": "/a|/b"}), &get("/b")), "alternation stays inside the anchors");
    assert!(!holds(json!({"path_regex": "/a|/b"}), &get("/b/c")));
}

#[test]
fn bad_regexes_and_paths_are_refused_with_their_field() {
    for bad in ["(", "a)|(b", "(?=x)", "[z-a]", "\\"] {
        let err = compile_err(json!({"path_regex": bad}));
        assert_eq!(err.path, "m.path_regex", "{bad}");
        assert!(err.message.starts_with("invalid regex"), "{bad}: {err}");
    }
    let lookaround = compile_err(json!({"path_regex": "(?=x)"})).message;
    assert!(!lookaround.contains('\n') && lookaround.contains("look-around"), "{lookaround}");
    assert!(compile_anchored("a{1000}{1000}").unwrap_err().contains("too large"));
    assert_eq!(compile_err(json!({"path": "x"})).path, "m.path");
    assert_eq!(compile_err(json!({"path_prefix": "/a b"})).path, "m.path_prefix");
    assert_eq!(compile_err(json!({"path": "/a?b"})).path, "m.path");
    assert_eq!(compile_err(json!({"path": "/a", "path_regex": "/a"})).path, "m");
    assert!(crate::check_regex("^/ok$").is_ok());
    assert!(crate::check_regex("(").is_err());
}

// === hosts ===

#[test]
fn host_exact_ignores_case_and_port() {
    let m = json!({"host": "API.example.com"});
    assert!(holds(m.clone(), &with_headers("GET", "/", &[("host", "api.example.com")])));
    assert!(holds(m.clone(), &with_headers("GET", "/", &[("host", "Api.Example.COM:8080")])));
    assert!(!holds(m.clone(), &with_headers("GET", "/", &[("host", "api.example.com.evil")])));
    assert!(!holds(m.clone(), &with_headers("GET", "/", &[("host", "example.com")])));
    assert!(!holds(m.clone(), &get("/")), "no host at all");
    // An absolute-form target (and HTTP/2's :authority) wins over the Host header.
    assert!(holds(m.clone(), &with_headers("GET", "http://api.example.com:81/", &[("host", "other")])));
    let v6 = json!({"host": "[::1]"});
    assert!(holds(v6.clone(), &with_headers("GET", "/", &[("host", "[::1]:8080")])));
    assert!(holds(v6, &with_headers("GET", "/", &[("host", "[::1]")])));
    assert!(holds(json!({"host": "127.0.0.1"}), &with_headers("GET", "/", &[("host", "127.0.0.1:80")])));
}

#[test]
fn host_wildcard_matches_longer_names_only() {
    let m = json!({"host": "*.example.com"});
    for host in ["a.example.com", "a.b.example.com:443", "A.EXAMPLE.com"] {
        assert!(holds(m.clone(), &with_headers("GET", "/", &[("host", host)])), "{host}");
    }
    for host in ["example.com", ".example.com", "aexample.com", "a.example.org"] {
        assert!(!holds(m.clone(), &with_headers("GET", "/", &[("host", host)])), "{host}");
    }
}

#[test]
fn bad_host_patterns_are_refused() {
    for bad in ["", "a.com:80", "*", "*.", "a..b", "*example.com", "a/b", "x.*.com", "[zz]"] {
        assert_eq!(compile_err(json!({"host": bad})).path, "m.host", "{bad:?}");
    }
}

// === methods ===

#[test]
fn methods_match_any_listed_case_sensitively() {
    let m = json!({"methods": ["GET", "POST"]});
    assert!(holds(m.clone(), &with_headers("POST", "/", &[])));
    assert!(!holds(m.clone(), &with_headers("DELETE", "/", &[])));
    assert!(!holds(json!({"methods": ["get"]}), &get("/")));
    assert!(holds(json!({"methods": []}), &with_headers("PATCH", "/", &[])));
    assert_eq!(compile_err(json!({"methods": ["GET", "GET"]})).path, "m.methods.1");
    assert_eq!(compile_err(json!({"methods": ["G T"]})).path, "m.methods.0");
}

// === headers and query ===

fn cond(name: &str, kind: &str, value: Value) -> Value {
    let mut c = json!({"name": name, "exact": null, "regex": null, "present": null});
    c[kind] = value;
    c
}

#[test]
fn header_conditions_exact_regex_present_absent() {
    let exact = json!({"headers": [cond("X-Canary", "exact", json!("1"))]});
    assert!(holds(exact.clone(), &with_headers("GET", "/", &[("x-canary", "1")])));
    assert!(!holds(exact.clone(), &with_headers("GET", "/", &[("x-canary", "10")])));
    assert!(!holds(exact.clone(), &get("/")));
    // Any one of several values will do.
    assert!(holds(exact, &with_headers("GET", "/", &[("x-canary", "0"), ("x-canary", "1")])));
    let re = json!({"headers": [cond("user-agent", "regex", json!("curl/.*"))]});
    assert!(holds(re.clone(), &with_headers("GET", "/", &[("user-agent", "curl/8.5")])));
    assert!(!holds(re, &with_headers("GET", "/", &[("user-agent", "xcurl/8.5")])));
    let present = json!({"headers": [cond("x-p", "present", json!(true))]});
    assert!(holds(present.clone(), &with_headers("GET", "/", &[("x-p", "")])));
    assert!(!holds(present, &get("/")));
    let absent = json!({"headers": [cond("x-p", "present", json!(false))]});
    assert!(holds(absent.clone(), &get("/")));
    assert!(!holds(absent, &with_headers("GET", "/", &[("x-p", "1")])));
}

#[test]
fn query_conditions_use_the_first_raw_occurrence() {
    let exact = json!({"query": [cond("debug", "exact", json!("1"))]});
    assert!(holds(exact.clone(), &get("/?a=2&debug=1")));
    assert!(!holds(exact.clone(), &get("/?debug=0&debug=1")), "the first occurrence decides");
    assert!(!holds(exact.clone(), &get("/?xdebug=1")));
    assert!(!holds(exact, &get("/")));
    assert!(holds(json!({"query": [cond("q", "exact", json!("a%20b"))]}), &get("/?q=a%20b")));
    let re = json!({"query": [cond("v", "regex", json!("[0-9]+"))]});
    assert!(holds(re.clone(), &get("/?v=42")));
    assert!(!holds(re, &get("/?v=42a")));
    let present = json!({"query": [cond("flag", "present", json!(true))]});
    assert!(holds(present.clone(), &get("/?flag")));
    assert!(holds(present.clone(), &get("/?flag=")));
    assert!(!holds(present, &get("/?flags=1")));
    assert!(holds(json!({"query": [cond("flag", "present", json!(false))]}), &get("/?other=1")));
}

#[test]
fn every_condition_must_hold() {
    let m = json!({"host": "*.example.com", "path_prefix": "/api", "methods": ["POST"],
                   "headers": [cond("x-a", "exact", json!("1"))], "query": [cond("q", "present", json!(true))]});
    let all = [("host", "a.example.com"), ("x-a", "1")];
    assert!(holds(m.clone(), &with_headers("POST", "/api/x?q", &all)));
    assert!(!holds(m.clone(), &with_headers("GET", "/api/x?q", &all)));
    assert!(!holds(m.clone(), &with_headers("POST", "/web?q", &all)));
    assert!(!holds(m.clone(), &with_headers("POST", "/api/x", &all)));
    assert!(!holds(m.clone(), &with_headers("POST", "/api/x?q", &[("host", "a.example.com")])));
    assert!(!holds(m, &with_headers("POST", "/api/x?q", &[("host", "example.com"), ("x-a", "1")])));
}

#[test]
fn bad_conditions_are_refused_with_their_field() {
    let two = json!({"name": "x", "exact": "1", "regex": "1", "present": null});
    assert_eq!(compile_err(json!({"headers": [two.clone()]})).path, "m.headers.0");
    assert_eq!(compile_err(json!({"query": [two]})).path, "m.query.0");
    assert_eq!(
        compile_err(json!({"headers": [cond("bad name", "present", json!(true))]})).path,
        "m.headers.0.name"
    );
    assert_eq!(compile_err(json!({"headers": [cond("x", "regex", json!("("))]})).path, "m.headers.0.regex");
    assert_eq!(compile_err(json!({"query": [cond("a=b", "present", json!(true))]})).path, "m.query.0.name");
    assert_eq!(compile_err(json!({"query": [cond("", "present", json!(true))]})).path, "m.query.0.name");
}

// === actions: rewrites and header edits ===

fn forward_actions(rewrite: Value, matched: &PathMatch) -> Result<ForwardActions, Error> {
    let rewrite: RewriteSpec = serde_json::from_value(rewrite).unwrap();
    let none = header_actions(&[], &[], &[]);
    ForwardActions::compile(&rewrite, &none, &none, matched, "r")
}

fn rewritten(actions: &ForwardActions, pq: &str) -> Option<String> {
    actions.rewrite_path(Some(&PathAndQuery::try_from(pq).unwrap())).map(|p| p.to_string())
}

#[test]
fn prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
    let a = forward_actions(json!({"path_prefix": "/v2", "host": null}), &PathMatch::Prefix("/api".into()))
        .unwrap();
    assert_eq!(rewritten(&a, "/api/users?id=1").as_deref(), Some("/v2/users?id=1"));
    assert_eq!(rewritten(&a, "/api").as_deref(), Some("/v2"));
    let root = forward_actions(json!({"path_prefix": "/", "host": null}), &PathMatch::Prefix("/api/".into()))
        .unwrap();
    assert_eq!(rewritten(&root, "/api/x").as_deref(), Some("/x"));
    let exact =
        forward_actions(json!({"path_prefix": "/new", "host": null}), &PathMatch::Exact("/old".into()))
            .unwrap();
    assert_eq!(rewritten(&exact, "/old?a").as_deref(), Some("/new?a"));
    let none =
        forward_actions(json!({"path_prefix": null, "host": null}), &PathMatch::Prefix("/".into())).unwrap();
    assert_eq!(rewritten(&none, "/x"), None, "no rewrite leaves the path alone");
    let re = PathMatch::Regex(compile_anchored("/a").unwrap());
    let err = forward_actions(json!({"path_prefix": "/b", "host": null}), &re).unwrap_err();
    assert_eq!(err.path, "r.rewrite.path_prefix");
    let err = forward_actions(json!({"path_prefix": "b", "host": null}), &PathMatch::Prefix("/".into()))
        .unwrap_err();
    assert_eq!(err.path, "r.rewrite.path_prefix");
}

#[test]
fn host_rewrite_sets_the_host_header() {
    let p = PathMatch::Prefix("/".into());
    let a = forward_actions(json!({"path_prefix": null, "host": "api.internal:8080"}), &p).unwrap();
    let mut h = HeaderMap::new();
    h.insert(HOST, "public.example.com".parse().unwrap());
    a.apply_request(&mut h);
    assert_eq!(h.get_all(HOST).iter().collect::<Vec<_>>(), ["api.internal:8080"]);
    for bad in ["", "a b", "user@host", "http://x", "a/b"] {
        let err = forward_actions(json!({"path_prefix": null, "host": bad}), &p).unwrap_err();
        assert_eq!(err.path, "r.rewrite.host", "{bad:?}");
    }
}

#[test]
fn header_edits_remove_then_set_then_add() {
    let spec = header_actions(
        &[("x-set", "new"), ("x-both", "set")],
        &[("x-add", "2"), ("x-both", "added")],
        &["x-gone", "x-both"],
    );
    let actions = HeaderActions::compile(&spec, "h").unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-set", "old".parse().unwrap());
    h.append("x-set", "older".parse().unwrap());
    h.insert("x-add", "1".parse().unwrap());
    h.insert("x-gone", "1".parse().unwrap());
    h.insert("x-both", "orig".parse().unwrap());
    actions.apply(&mut h);
    let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(all("x-set"), ["new"]);
    assert_eq!(all("x-add"), ["1", "2"]);
    assert_eq!(all("x-both"), ["set", "added"]);
    assert!(all("x-gone").is_empty());
}

#[test]
fn bad_header_edits_are_refused_with_their_field() {
    let err = |spec| HeaderActions::compile(&spec, "h").unwrap_err().path;
    assert_eq!(err(header_actions(&[("bad name", "1")], &[], &[])), "h.set.0.name");
    assert_eq!(err(header_actions(&[], &[("x-a", "1"), ("x-b", "a\nb")], &[])), "h.add.1.value");
    assert_eq!(err(header_actions(&[], &[], &["host"])), "h.remove.0");
    assert_eq!(err(header_actions(&[("Content-Length", "1")], &[], &[])), "h.set.0.name");
    assert_eq!(err(header_actions(&[("transfer-encoding", "chunked")], &[], &[])), "h.set.0.name");
}

// === actions: redirects and direct responses ===

fn redirect(fields: Value, matched: &PathMatch) -> Result<Local, Error> {
    let mut spec = json!({"status": 301, "scheme": null, "host": null, "path": null,
                          "prefix_rewrite": null, "strip_query": false});
    for (k, v) in fields.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let spec: RedirectSpec = serde_json::from_value(spec).unwrap();
    Local::redirect(&spec, &header_actions(&[], &[], &[]), matched, "r", Arc::default(), Arc::default())
}

fn location(fields: Value, matched: &PathMatch, req: &Request<()>) -> (u16, Option<String>) {
    let resp = redirect(fields, matched).unwrap().respond(req);
    let loc = resp.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), loc)
}

#[test]
fn redirect_builds_the_location_as_envoy_does() {
    let any = PathMatch::Prefix("/".into());
    let req = with_headers("GET", "/old/page?a=1", &[("host", "example.com:8080")]);
    let at = |fields: Value, m: &PathMatch| location(fields, m, &req).1.unwrap();
    assert_eq!(at(json!({}), &any), "http://example.com:8080/old/page?a=1");
    assert_eq!(at(json!({"path": "/new"}), &any), "http://example.com:8080/new?a=1");
    assert_eq!(at(json!({"path": "/new", "strip_query": true}), &any), "http://example.com:8080/new");
    assert_eq!(at(json!({"host": "other.example:9"}), &any), "http://other.example:9/old/page?a=1");
    assert_eq!(at(json!({"scheme": "https"}), &any), "https://example.com:8080/old/page?a=1");
    let old = PathMatch::Prefix("/old".into());
    assert_eq!(at(json!({"prefix_rewrite": "/fresh"}), &old), "http://example.com:8080/fresh/page?a=1");
    let exact = PathMatch::Exact("/old/page".into());
    assert_eq!(at(json!({"prefix_rewrite": "/p"}), &exact), "http://example.com:8080/p?a=1");
    // The old scheme's default port goes with it; another port stays.
    let on_80 = with_headers("GET", "/x", &[("host", "example.com:80")]);
    assert_eq!(location(json!({"scheme": "https"}), &any, &on_80).1.unwrap(), "https://example.com/x");
    // Without any host, the location is relative.
    assert_eq!(location(json!({"path": "/n"}), &any, &get("/x?q")).1.unwrap(), "/n?q");
    // A Host header that is not a host is not echoed into a Location.
    let bad = with_headers("GET", "/x", &[("host", "a b/c")]);
    assert_eq!(location(json!({}), &any, &bad), (400, None));
}

#[test]
fn redirect_statuses_and_refusals() {
    let any = PathMatch::Prefix("/".into());
    for s in [301u16, 302, 303, 307, 308] {
        assert_eq!(location(json!({"status": s}), &any, &get("/")).0, s);
    }
    let err = |fields: Value, m: &PathMatch| redirect(fields, m).unwrap_err().path;
    assert_eq!(err(json!({"status": 200}), &any), "r.redirect.status");
    assert_eq!(err(json!({"status": 304}), &any), "r.redirect.status");
    assert_eq!(err(json!({"scheme": "ftp"}), &any), "r.redirect.scheme");
    assert_eq!(err(json!({"host": "a b"}), &any), "r.redirect.host");
    assert_eq!(err(json!({"path": "rel"}), &any), "r.redirect.path");
    assert_eq!(err(json!({"path": "/a", "prefix_rewrite": "/b"}), &any), "r.redirect");
    let re = PathMatch::Regex(compile_anchored("/a").unwrap());
    assert_eq!(err(json!({"prefix_rewrite": "/b"}), &re), "r.redirect.prefix_rewrite");
}

#[test]
fn direct_response_answers_and_counts_under_the_route() {
    let counters = Arc::new(StatusCounters::default());
    let stats = Arc::new(RouteStats::default());
    let spec = serde_json::from_value(json!({"status": 418, "body": "short and stout"})).unwrap();
    let local = Local::direct(
        &spec,
        &header_actions(&[("x-tea", "yes")], &[], &[]),
        "r",
        Arc::clone(&counters),
        stats,
    )
    .unwrap();
    let resp = local.respond(&get("/"));
    assert_eq!(resp.status().as_u16(), 418);
    assert_eq!(resp.headers()["x-tea"], "yes");
    assert_eq!(counters.total(), 1);
    let bad = serde_json::from_value(json!({"status": 99, "body": ""})).unwrap();
    let none = header_actions(&[], &[], &[]);
    let err = Local::direct(&bad, &none, "r", Arc::default(), Arc::default()).unwrap_err();
    assert_eq!(err.path, "r.direct_response.status");
    let long = serde_json::from_value(json!({"status": 200, "body": "x".repeat(70_000)})).unwrap();
    let err = Local::direct(&long, &none, "r", Arc::default(), Arc::default()).unwrap_err();
    assert_eq!(err.path, "r.direct_response.body");
}
