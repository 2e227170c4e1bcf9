//! Signed visitor ids over real sockets: the edge's cookie names the visitor, a body that names
//! someone else never reads their offers (pass-through and fast), a rotated secret keeps the
//! visitors, and the upstream receives the cookie's id and nothing the body claimed.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;

const SECRET_A: &str = "first-secret-with-more-than-32-bytes-aaaa";
const SECRET_B: &str = "second-secret-with-more-than-32-bytes-bbb";

/// `[service.identity]` in signed-cookie mode, its `secrets` (one a line, the first signs) in
/// `visitor.secret` beside the config.
fn signed(setup: Setup, secrets: &str) -> Setup {
    std::fs::write(setup.dir().join("visitor.secret"), secrets).unwrap();
    setup
        .service("identity.mode", "signed-cookie")
        .service("identity.secret_file", "visitor.secret")
}

/// A browser: keeps the edge's cookie between requests, as a cookie jar does.
struct Browser<'a> {
    stack: &'a Stack,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(stack: &'a Stack) -> Self {
        Browser {
            stack,
            cookie: None,
        }
    }

    fn post(&mut self, body: &str) -> Response {
        let mut headers = vec![("Content-Type", "application/json")];
        let cookie = self.cookie.clone().map(|c| format!("p13n_vid={c}"));
        if let Some(c) = &cookie {
            headers.push(("Cookie", c));
        }
        let r = to(self.stack.proxy)
            .post(PAGEVIEWS)
            .headers(&headers)
            .body(body.as_bytes())
            .send();
        if let Some(set) = r.header("set-cookie") {
            let token = set.split(';').next().unwrap();
            self.cookie = Some(token.strip_prefix("p13n_vid=").unwrap().to_string());
        }
        r
    }

    /// The visitor id in the cookie.
    fn id(&self) -> String {
        let token = self.cookie.as_deref().expect("a cookie");
        token.split('.').nth(1).unwrap().to_string()
    }
}

/// The demo rules give `offer_for_women`, with the visitor's profile, to a visitor whose last
/// category was `women`.
const WOMEN: &str = r#"{"td_path":"/retail/women","product_category":"women"}"#;
/// A page outside `/retail`: no view counted.
const HOME: &str = r#"{"td_path":"/home"}"#;

fn forged_body_reads_no_one_elses_offers(setup: Setup) {
    let stack = signed(setup, SECRET_A).start();
    let mut victim = Browser::new(&stack);
    let first = victim.post(WOMEN);
    assert_eq!(first.status, 200, "{}", first.text());
    let set = first
        .header("set-cookie")
        .expect("a new visitor gets a cookie");
    assert!(
        set.ends_with("; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    let again = victim.post(HOME);
    assert!(again.text().contains("offer_for_women"), "{}", again.text());
    assert_eq!(
        again.header("set-cookie"),
        None,
        "a valid cookie is not sent again"
    );

    // The attacker names the victim in the body: without a cookie, with a cookie of their own,
    // and with the victim's id in a cookie whose tag they had to guess.
    let victim_id = victim.id();
    let forged = format!(r#"{{"td_client_id":"{victim_id}","td_path":"/retail/women"}}"#);
    let mut attacker = Browser::new(&stack);
    for attempt in 0..3 {
        if attempt == 2 {
            let tag_guess = "A".repeat(43);
            attacker.cookie = Some(format!("1.{victim_id}.1800000000.{tag_guess}"));
        }
        let r = attacker.post(&forged);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.text().contains("offer_for_women"), "{}", r.text());
        assert!(!r.text().contains("women"), "{}", r.text());
        assert_ne!(attacker.id(), victim_id);
    }
    let mine = victim.post(HOME);
    assert!(mine.text().contains("offer_for_women"), "{}", mine.text());
    // The victim's profile upstream took none of it, once every event is delivered (the
    // victim's three and the attacker's three; in fast mode they go from the spool): one retail
    // view of their own, where the attacker's three would have made four, past the loyalty
    // offer's three. Asked of the upstream itself, not through the edge's cache.
    assert!(
        eventually(SECONDS_10, || stack.emulator.ingested() == 6),
        "{}",
        stack.emulator.stats()
    );
    let profile = to(stack.emulator.addr)
        .post(PAGEVIEWS)
        .headers(&[
            ("Authorization", &format!("TD1 {KEY}")),
            ("WP13n-Token", TOKEN),
            ("Content-Type", "application/vnd.treasuredata.v1+json"),
        ])
        .body(format!(r#"{{"td_client_id":"{victim_id}","td_path":"/home"}}"#).as_bytes())
        .send();
    assert!(
        profile.text().contains("offer_for_women"),
        "{}",
        profile.text()
    );
    assert!(
        !profile.text().contains("offer_for_high_loyalty"),
        "the attacker's views reached the victim: {}",
        profile.text()
    );
    assert_eq!(
        stack.metric("p13n_edge_visitor_ids_total", &["outcome=\"minted\""]),
        2.0
    );
    assert_eq!(
        stack.metric("p13n_edge_visitor_ids_total", &["outcome=\"replaced\""]),
        1.0
    );
}

#[test]
fn a_forged_body_id_reads_no_one_elses_offers_in_pass_through_mode() {
    forged_body_reads_no_one_elses_offers(Stack::builder("identity_pass"));
}

#[test]
fn a_forged_body_id_reads_no_one_elses_offers_in_fast_mode() {
    forged_body_reads_no_one_elses_offers(Stack::builder("identity_fast").fast());
}

#[test]
fn a_rotated_secret_keeps_every_visitor_and_a_dropped_one_lets_them_go() {
    let name = "identity_rotation";
    let stack = signed(Stack::builder(name), SECRET_A).start();
    let mut visitor = Browser::new(&stack);
    visitor.post(WOMEN);
    let id = visitor.id();
    let old_token = visitor.cookie.clone().unwrap();

    // The new secret first, the old one still accepted: the same visitor, re-signed.
    let secret_file = scratch(name).join("visitor.secret");
    std::fs::write(
        &secret_file,
        format!("{SECRET_B}\n# the previous one\n{SECRET_A}\n"),
    )
    .unwrap();
    stack.reload(|setup| setup);
    let r = visitor.post(r#"{"td_path":"/retail/women"}"#);
    assert!(r.text().contains("offer_for_women"), "{}", r.text());
    assert!(
        r.header("set-cookie").is_some(),
        "re-issued under the new secret"
    );
    assert_eq!(visitor.id(), id);
    assert_ne!(visitor.cookie.as_deref(), Some(old_token.as_str()));

    // The old secret dropped: the re-issued cookie still holds, the old one names a stranger.
    std::fs::write(&secret_file, format!("{SECRET_B}\n")).unwrap();
    stack.reload(|setup| setup);
    let r = visitor.post(r#"{"td_path":"/retail/women"}"#);
    assert!(r.text().contains("offer_for_women"), "{}", r.text());
    assert_eq!((r.header("set-cookie"), visitor.id()), (None, id.clone()));
    let mut stale = Browser::new(&stack);
    stale.cookie = Some(old_token);
    let r = stale.post(r#"{"td_path":"/retail/women"}"#);
    assert!(!r.text().contains("offer_for_women"), "{}", r.text());
    assert_ne!(stale.id(), id);
}

#[test]
fn the_upstream_receives_the_cookies_id_and_a_bad_header_token_gets_401() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    let proxy = signed(Setup::new("identity_upstream"), SECRET_A)
        .upstream(upstream.url())
        .service("identity.header", "P13n-Visitor")
        .service("event_uuid", false)
        .start_proxy();
    let addr = proxy.addr;
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        to(addr)
            .post(PAGEVIEWS)
            .headers(&all)
            .body(body.as_bytes())
            .send()
    };
    // Both identifiers of the body give way to the cookie's id, as the first identifier.
    let r = post(
        &[],
        r#"{"td_client_id":"victim","email":"victim@example.com","a":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.header("set-cookie").unwrap();
    let token = token
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("p13n_vid=")
        .unwrap()
        .to_string();
    let id = token.split('.').nth(1).unwrap().to_string();
    // The signed header names the same visitor for a server-to-server caller; no cookie back.
    let r = post(
        &[("P13n-Visitor", &token)],
        r#"{"td_client_id":"victim","b":2}"#,
    );
    assert_eq!((r.status, r.header("set-cookie")), (200, None));
    post(&[("P13n-Visitor", "1.forged")], r#"{"b":3}"#).assert_error(401, 401);
    assert_eq!(
        upstream.bodies(),
        [
            format!(r#"{{"a":1,"td_client_id":"{id}"}}"#),
            format!(r#"{{"b":2,"td_client_id":"{id}"}}"#)
        ]
    );
    for raw in &upstream.requests() {
        let head = raw.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(
            !head.contains("cookie") && !head.contains("p13n-visitor"),
            "{head}"
        );
    }
}

#[test]
fn in_refuse_mode_a_body_naming_someone_else_is_refused_and_never_sent() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    let proxy = signed(Setup::new("identity_refuse"), SECRET_A)
        .upstream(upstream.url())
        .service("identity.body_identifier", "refuse")
        .start_proxy();
    let addr = proxy.addr;
    let r = to(addr)
        .post(PAGEVIEWS)
        .headers(&[("Content-Type", "application/json")])
        .body(br#"{"td_client_id":"victim"}"#)
        .send();
    r.assert_error(403, 403);
    // Still a visitor of the edge's: the cookie comes with the refusal, and the same id works.
    let set = r.header("set-cookie").expect("a cookie, error or not");
    let cookie = set.split(';').next().unwrap().to_string();
    let id = cookie.split('.').nth(1).unwrap().to_string();
    let mine = format!(r#"{{"td_client_id":"{id}"}}"#);
    let r = to(addr)
        .post(PAGEVIEWS)
        .headers(&[("Content-Type", "application/json"), ("Cookie", &cookie)])
        .body(mine.as_bytes())
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn no_cookie_for_crawlers_preflights_or_without_consent_and_a_withdrawal_removes_it() {
    let stack = signed(Stack::builder("identity_consent"), SECRET_A)
        .service("consent.honor_gpc", true)
        .start();
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        to(stack.proxy)
            .post(PAGEVIEWS)
            .headers(&all)
            .body(WOMEN.as_bytes())
            .send()
    };
    let crawler = post(&[("User-Agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")]);
    assert_eq!((crawler.status, crawler.header("set-cookie")), (200, None));
    let gpc = post(&[("Sec-GPC", "1")]);
    assert_eq!((gpc.status, gpc.header("set-cookie")), (200, None));
    let preflight = to(stack.proxy).method("OPTIONS", PAGEVIEWS).send();
    assert_eq!(preflight.header("set-cookie"), None);

    // A visitor with the cookie who then withdraws consent loses it.
    let mut visitor = Browser::new(&stack);
    visitor.post(WOMEN);
    let cookie = format!("p13n_vid={}", visitor.cookie.clone().unwrap());
    let withdrawn = post(&[("Sec-GPC", "1"), ("Cookie", &cookie)]);
    assert_eq!(withdrawn.status, 200);
    assert_eq!(
        withdrawn.header("set-cookie").as_deref(),
        Some("p13n_vid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
    );
    assert_eq!(
        stack.metric("p13n_edge_visitor_ids_total", &["outcome=\"minted\""]),
        1.0,
        "only the consenting visitor was given an id"
    );
}

#[test]
fn a_planted_second_cookie_makes_no_one_the_planters_visitor() {
    let stack = signed(Stack::builder("identity_planted"), SECRET_A).start();
    let mut victim = Browser::new(&stack);
    let mut planter = Browser::new(&stack);
    victim.post(HOME);
    planter.post(HOME);
    let (victim_token, planter_token) = (
        victim.cookie.clone().unwrap(),
        planter.cookie.clone().unwrap(),
    );
    // The planter's cookie, set for a longer path, comes first from the victim's browser.
    let cookies = format!("p13n_vid={planter_token}; p13n_vid={victim_token}");
    let r = to(stack.proxy)
        .post(PAGEVIEWS)
        .headers(&[("Content-Type", "application/json"), ("Cookie", &cookies)])
        .body(WOMEN.as_bytes())
        .send();
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_some(), "a fresh id");
    // The planter's profile got nothing of the victim's event.
    let theirs = planter.post(HOME);
    assert!(
        !theirs.text().contains("offer_for_women"),
        "{}",
        theirs.text()
    );
    assert_eq!(
        stack.metric("p13n_edge_visitor_ids_total", &["outcome=\"conflict\""]),
        1.0
    );
}
