use super::*;

#[test]
fn endpoints_need_host_and_port() {
    assert_eq!(parse_endpoint("127.0.0.1:9001").unwrap().port_u16(), Some(9001));
    assert_eq!(parse_endpoint("[::1]:80").unwrap().host(), "[::1]");
    assert_eq!(parse_endpoint("svc.local:8080").unwrap().host(), "svc.local");
    assert!(parse_endpoint("127.0.0.1").unwrap_err().contains("needs a port"));
    assert!(parse_endpoint("127.0.0.1:0").unwrap_err().contains("needs a port"));
    assert!(parse_endpoint("http://x:1").is_err());
    assert!(parse_endpoint("user@x:1").is_err());
    assert!(parse_endpoint("").is_err());
}
