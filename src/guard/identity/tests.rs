//! Signed visitor ids: tokens, cookies, rotation and refresh, conflicts, the header token.

use super::*;

const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn policy(secrets: &[&str]) -> IdentityPolicy {
    let secrets: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
    IdentityPolicy::new(&secrets, "vid".into())
}

const A: &str = "a-secret-of-at-least-32-bytes-000000";
const B: &str = "b-secret-of-at-least-32-bytes-111111";

fn with_cookie(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(COOKIE, HeaderValue::from_str(value).unwrap());
    h
}

/// The id of a Set-Cookie's token.
fn cookie_id(set_cookie: &HeaderValue) -> String {
    let token = set_cookie.to_str().unwrap().split(';').next().unwrap();
    token.split('.').nth(1).unwrap().to_string()
}

#[test]
fn a_new_visitor_gets_a_random_v4_id_in_a_cookie_with_every_attribute() {
    let p = policy(&[A]);
    let v = p.visitor(&HeaderMap::new(), false, at(NOW)).unwrap();
    assert_eq!(v.outcome, Outcome::Minted);
    assert!(id_form(&v.id) && v.id.as_bytes()[14] == b'4', "{}", v.id);
    let cookie = v.set_cookie.unwrap();
    let text = cookie.to_str().unwrap();
    assert!(
        text.starts_with(&format!("vid=1.{}.{NOW}.", v.id)),
        "{text}"
    );
    assert!(text.ends_with("; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"));
    let other = p.visitor(&HeaderMap::new(), false, at(NOW)).unwrap();
    assert_ne!(other.id, v.id);
    let secure = p.visitor(&HeaderMap::new(), true, at(NOW)).unwrap();
    assert!(secure
        .set_cookie
        .unwrap()
        .to_str()
        .unwrap()
        .contains("; Secure"));
}

#[test]
fn a_valid_cookie_is_the_visitor_and_is_not_sent_again_until_it_ages() {
    let p = policy(&[A]);
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let headers = with_cookie(&format!("x=1; vid={}", p.token(id, NOW)));
    let v = p.visitor(&headers, false, at(NOW + 60)).unwrap();
    assert_eq!(
        (v.id.as_str(), v.outcome, v.set_cookie),
        (id, Outcome::Valid, None)
    );
    let later = p.visitor(&headers, false, at(NOW + 8 * 86_400)).unwrap();
    assert_eq!((later.id.as_str(), later.outcome), (id, Outcome::Refreshed));
    let fresh = later.set_cookie.unwrap();
    assert_eq!(cookie_id(&fresh), id);
    assert!(fresh
        .to_str()
        .unwrap()
        .contains(&format!(".{}.", NOW + 8 * 86_400)));
}

#[test]
fn forged_tampered_expired_or_future_tokens_name_a_new_visitor() {
    let p = policy(&[A]);
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let good = p.token(id, NOW);
    let other_id = good.replace("0f4e", "0f4f");
    let other_time = good.replace(&NOW.to_string(), &(NOW + 1).to_string());
    let foreign = policy(&[B]).token(id, NOW);
    let mut cut = good.clone();
    cut.pop();
    for (token, when) in [
        (other_id.as_str(), NOW),
        (other_time.as_str(), NOW),
        (foreign.as_str(), NOW),
        (cut.as_str(), NOW),
        ("1.not-an-id.1.AAAA", NOW),
        (good.as_str(), NOW + 366 * 86_400),
        (good.as_str(), NOW - 301),
    ] {
        let v = p
            .visitor(&with_cookie(&format!("vid={token}")), false, at(when))
            .unwrap();
        assert_eq!(v.outcome, Outcome::Replaced, "{token} at {when}");
        assert_ne!(v.id, id);
    }
}

#[test]
fn a_rotated_secret_keeps_the_visitor_and_reissues_under_the_new_one() {
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let old = policy(&[A]).token(id, NOW);
    let rotated = policy(&[B, A]);
    let v = rotated
        .visitor(&with_cookie(&format!("vid={old}")), false, at(NOW + 60))
        .unwrap();
    assert_eq!((v.id.as_str(), v.outcome), (id, Outcome::Refreshed));
    let reissued = v.set_cookie.unwrap();
    let token = reissued.to_str().unwrap().split(';').next().unwrap();
    // The new token verifies under B alone.
    let only_b = policy(&[B]);
    let again = only_b
        .visitor(&with_cookie(token), false, at(NOW + 61))
        .unwrap();
    assert_eq!((again.id.as_str(), again.outcome), (id, Outcome::Valid));
    // Once A is dropped, its tokens no longer count.
    let dropped = only_b
        .visitor(&with_cookie(&format!("vid={old}")), false, at(NOW + 60))
        .unwrap();
    assert_eq!(dropped.outcome, Outcome::Replaced);
}

#[test]
fn of_several_cookies_of_the_name_only_one_valid_id_counts_and_two_name_no_one() {
    let p = policy(&[A]);
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let mut headers = with_cookie("vid=1.junk");
    let mine = HeaderValue::from_str(&format!("vid={}", p.token(id, NOW))).unwrap();
    headers.append(COOKIE, mine.clone());
    headers.append(COOKIE, mine);
    let v = p.visitor(&headers, false, at(NOW)).unwrap();
    assert_eq!((v.id.as_str(), v.outcome), (id, Outcome::Valid));
    // A planted cookie with a valid token of its own, before or after the visitor's: a
    // fresh visitor, never the planter's.
    let planted = p.token("aaaaaaaa-7b3d-4c5e-9f60-718293a4b5c6", NOW);
    for cookies in [
        format!("vid={planted}; vid={}", p.token(id, NOW)),
        format!("vid={}; vid={planted}", p.token(id, NOW)),
    ] {
        let v = p.visitor(&with_cookie(&cookies), false, at(NOW)).unwrap();
        assert_eq!(v.outcome, Outcome::Conflict);
        assert!(v.id != id && !planted.contains(&v.id), "{}", v.id);
        assert!(v.set_cookie.is_some());
    }
    // Past four cookies of the name, the rest are not looked at.
    let many = format!("{}; vid={}", ["vid=x"; 4].join("; "), p.token(id, NOW));
    let v = p.visitor(&with_cookie(&many), false, at(NOW)).unwrap();
    assert_eq!(v.outcome, Outcome::Replaced);
}

#[test]
fn a_removal_expires_the_cookie_with_the_same_attributes() {
    let mut p = policy(&[A]);
    p.domain = Some("shop.example".into());
    let removal = p.removal(true);
    assert_eq!(
        removal.to_str().unwrap(),
        "vid=; Path=/; Max-Age=0; Domain=shop.example; HttpOnly; Secure; SameSite=Lax"
    );
    assert!(p.has_cookie(&with_cookie("a=1; vid=x")));
    assert!(!p.has_cookie(&with_cookie("a=1; vidx=1")));
}

#[test]
fn the_header_token_is_checked_and_never_replaced_by_a_new_id() {
    let mut p = policy(&[A]);
    p.header = Some(HeaderName::from_static("p13n-visitor"));
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let mut headers = HeaderMap::new();
    headers.insert(
        "p13n-visitor",
        HeaderValue::from_str(&p.token(id, NOW)).unwrap(),
    );
    let v = p.visitor(&headers, false, at(NOW)).unwrap();
    assert_eq!(
        (v.id.as_str(), v.outcome, v.set_cookie),
        (id, Outcome::Header, None)
    );
    headers.insert("p13n-visitor", HeaderValue::from_static("1.forged"));
    assert_eq!(p.visitor(&headers, false, at(NOW)), Err(BadHeaderToken));
}

#[test]
fn attributes_follow_the_policy() {
    let mut p = policy(&[A]);
    p.secure = Some(true);
    p.same_site = SameSite::None;
    p.domain = Some("shop.example".into());
    p.max_age = Duration::from_secs(86_400);
    let v = p.visitor(&HeaderMap::new(), false, at(NOW)).unwrap();
    let text = v.set_cookie.unwrap().to_str().unwrap().to_string();
    assert!(
        text.ends_with(
            "; Path=/; Max-Age=86400; Domain=shop.example; HttpOnly; Secure; SameSite=None"
        ),
        "{text}"
    );
    assert!(format!("{p:?}").contains("keys: 1"));
}

proptest::proptest! {
    /// No token but the one made for an id and time verifies for them.
    #[test]
    fn any_change_to_a_token_breaks_it(at_byte in 0usize..94, to in 0u8..128) {
        let p = policy(&[A]);
        let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
        let good = p.token(id, NOW);
        let mut bytes = good.clone().into_bytes();
        let i = at_byte % bytes.len();
        proptest::prop_assume!(bytes[i] != to);
        bytes[i] = to;
        let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
        let verified = p.verify(&changed, NOW).map(|v| (v.id.to_string(), v.issued));
        // base64url's last character carries 2 spare bits: a change there may decode
        // to the same tag, which then names the same id at the same time.
        proptest::prop_assert!(verified.is_none() || verified == Some((id.to_string(), NOW)));
    }
}
