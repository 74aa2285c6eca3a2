//! Property tests for everything wsmon parses itself: client ids, the auth header, forwarded
//! addresses, allowed origins, cursors and the connections API's query string.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use wsmon::config::AddressHeader;
use wsmon::http::{auth::presented_token, client_addr};
use wsmon::monitor::{client_id, ConnectionInfo, PageRequest, Registry, SortKey};

/// Every address written anywhere in `text`, bare, bracketed or with a port (the oracle for the
/// forwarded-header property: the result must be one of them or the peer).
fn addresses_in(text: &str) -> Vec<IpAddr> {
    text.split([',', ';', '=', ' ', '"'])
        .filter_map(|t| {
            let t = t.trim();
            t.parse()
                .ok()
                .or_else(|| t.strip_prefix('[')?.split(']').next()?.parse().ok())
                .or_else(|| t.rsplit_once(':')?.0.parse().ok())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_id_validation_follows_its_three_rules(id in any::<String>()) {
        let expected = !id.is_empty()
            && id.chars().count() <= 64
            && !id.chars().any(char::is_control);
        prop_assert_eq!(client_id::validate(&id, 64).is_ok(), expected);
    }

    #[test]
    fn any_authorization_header_parses_without_panicking(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(value) = HeaderValue::from_bytes(&raw) {
            let mut h = HeaderMap::new();
            h.insert("authorization", value);
            let _ = presented_token(&h);
        }
    }

    #[test]
    fn basic_auth_yields_the_password_whatever_the_user(user in "[^:]{0,20}", password in ".{1,40}") {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
        prop_assert_eq!(presented_token(&h), Some(password.into_bytes()));
    }

    #[test]
    fn forwarded_headers_never_panic_and_yield_the_peer_or_a_listed_address(
        xff in "[0-9a-f:., \\[\\]]{0,60}",
        fwd in "[a-zA-Z0-9=;:,\"\\[\\]. _]{0,60}",
    ) {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&xff) { h.insert("x-forwarded-for", v); }
        if let Ok(v) = HeaderValue::from_str(&fwd) { h.insert("forwarded", v); }
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        for header in [AddressHeader::XForwardedFor, AddressHeader::Forwarded] {
            let got = client_addr::resolve(peer, &h, &trusted, header);
            prop_assert!(got == peer || addresses_in(&format!("{xff},{fwd}")).contains(&got), "{got}");
        }
    }

    #[test]
    fn origin_parsing_never_panics(origin in any::<String>()) {
        if let Ok(parsed) = wsmon::config::parse_origin(&origin) {
            prop_assert!(parsed.starts_with("http://") || parsed.starts_with("https://"));
        }
    }

    #[test]
    fn any_cursor_is_either_a_page_or_a_clean_error(cursor in any::<String>(), sort in 0usize..5) {
        let registry = Registry::new(Duration::from_secs(300));
        let _guards: Vec<_> = (0..5).map(|i| registry.register(ConnectionInfo::new(format!("c{i}")))).collect();
        let sort = [SortKey::Oldest, SortKey::Newest, SortKey::Messages, SortKey::Idle, SortKey::Queue][sort];
        let req = PageRequest { limit: 2, cursor: Some(cursor), client_id: None, search: None, sort };
        if let Ok(page) = registry.page(&req) {
            prop_assert!(page.items.len() <= 2);
        }
    }
}

#[tokio::test]
async fn arbitrary_connection_queries_get_200_or_a_json_400_never_a_500() {
    let app = crate::helpers::spawn_app().await;
    let _c = app.connect("q").await;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(128));
    let strategy = "[a-z_=&%0-9.;:-]{0,40}";
    let queries: Vec<String> = (0..128)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    for q in queries {
        let r = app
            .http
            .get(app.url(&format!("/api/v1/connections?{q}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(status == 200 || status == 400, "{q}: {status}");
        if status == 400 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "bad_request", "{q}");
        }
    }
}
