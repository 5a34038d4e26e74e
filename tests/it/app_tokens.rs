//! The app's own identities: tokens its backend issues (HS256, or RS256/ES256 under its JWKS,
//! served here by a fake identity provider on loopback) stand in for a tidings login. The user is
//! created on first connect; every bad token is refused with a documented code.

use serde_json::{Value, json};
use tidings::auth::app_identity::app_user_id;
use tidings_client::tidings_proto::Encoding;
use tidings_client::tidings_proto::v1::{self as wire, AuthResponse};
use tidings_client::{ClientError, Connection};
use tidings_fakes::{APP_HS256_SECRET, FakeIdentityProvider};

use crate::harness::{TestServer, TestUser, code_of, next_event, text};

const AUDIENCE: &str = "chat.example";
const ISSUER: &str = "https://accounts.example";

fn now() -> i64 {
    tidings::domain::now_ms() / 1000
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600, "iat": now(), "aud": AUDIENCE, "iss": ISSUER })
}

async fn server_for(idp: &FakeIdentityProvider) -> TestServer {
    let jwks_url = idp.jwks_url();
    TestServer::start_with(move |c| {
        c.app_tokens.hs256_secret = APP_HS256_SECRET.into();
        c.app_tokens.jwks_url = jwks_url;
        c.app_tokens.audience = AUDIENCE.into();
        c.app_tokens.issuer = ISSUER.into();
        c.app_tokens.jwks_min_refetch_secs = 0;
    })
}

/// A user of the app, connecting with `token`.
fn app_user(server: &TestServer, sub: &str, token: String) -> TestUser {
    let auth = AuthResponse { user_id: app_user_id(sub).0, access_token: token, ..AuthResponse::default() };
    TestUser { name: sub.into(), auth, ws_base: server.ws_base(), http: server.http() }
}

fn message_of(e: &ClientError) -> &str {
    match e {
        ClientError::Http { body: Some(body), .. } => &body.message,
        other => panic!("expected an HTTP error, got {other}"),
    }
}

async fn refused(server: &TestServer, token: &str) -> ClientError {
    Connection::connect(&server.ws_base(), token, Encoding::Protobuf).await.err().expect("the token is refused")
}

#[tokio::test]
pub(crate) async fn app_users_are_created_on_first_connect_and_chat_with_each_algorithm() {
    let idp = FakeIdentityProvider::start().await;
    let server = server_for(&idp).await;
    let ana = app_user(&server, "ana@app", idp.rs256(&claims("ana@app")));
    let bob = app_user(&server, "bob@app", idp.es256(&claims("bob@app")));
    let (a, _) = ana.connect_synced(0).await;
    let (mut b, _) = bob.connect_synced(0).await;
    let room = a.create_direct(bob.id()).await.expect("a direct room between app users").room_id;
    next_event(&mut b).await;
    a.send_text(room, "c1", "hello from the app").await.expect("send");
    assert_eq!(text(&next_event(&mut b).await), "hello from the app");

    // The same subject with HS256 is the same user; another `did` is another device of theirs,
    // which gets what the first device got.
    let mut hs = claims("bob@app");
    hs["did"] = json!("tablet");
    let tablet = app_user(&server, "bob@app", idp.hs256(&hs));
    let (_, events) = tablet.connect_synced(0).await;
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(wire::event::Kind::Entry(wire::RoomEntry { body: Some(wire::room_entry::Body::Text(t)), .. })) => {
                Some(t.text.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello from the app"]);
    // The keys were fetched once for both algorithms.
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let idp = FakeIdentityProvider::start().await;
    let server = server_for(&idp).await;
    Connection::connect(&server.ws_base(), &idp.rs256(&claims("ana")), Encoding::Protobuf).await.expect("rsa-1");
    assert_eq!(idp.fetches(), 1);
    idp.rotate("rsa-2");
    Connection::connect(&server.ws_base(), &idp.rs256(&claims("ana")), Encoding::Protobuf).await.expect("rsa-2");
    assert_eq!(idp.fetches(), 2, "the unknown kid fetched the key set again");
    // A kid nobody publishes is refused after one more fetch, not accepted.
    let unknown = idp.sign(&json!({ "alg": "RS256", "kid": "nobody" }), &claims("ana"));
    let e = refused(&server, &unknown).await;
    assert_eq!(code_of(&e), wire::ErrorCode::Unauthenticated);
    assert!(message_of(&e).contains("unknown key"), "{e}");
}

#[tokio::test]
async fn every_bad_app_token_is_refused_with_its_code() {
    let idp = FakeIdentityProvider::start().await;
    let server = server_for(&idp).await;
    let forged_claims = {
        // A valid token's signature over other claims.
        let good = idp.rs256(&claims("ana"));
        let signature = good.rsplit('.').next().unwrap().to_owned();
        let other = idp.rs256(&claims("mallory"));
        let (signing_input, _) = other.rsplit_once('.').unwrap();
        format!("{signing_input}.{signature}")
    };
    let mut wrong_audience = claims("ana");
    wrong_audience["aud"] = json!(["someone.else"]);
    let mut wrong_issuer = claims("ana");
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut expired = claims("ana");
    expired["exp"] = json!(now() - 3600);
    let mut not_yet = claims("ana");
    not_yet["nbf"] = json!(now() + 3600);
    let mut no_subject = claims("ana");
    no_subject.as_object_mut().unwrap().remove("sub");
    let mut no_expiry = claims("ana");
    no_expiry.as_object_mut().unwrap().remove("exp");
    let cases = [
        ("wrong signature", forged_claims, wire::ErrorCode::Unauthenticated, "bad signature"),
        ("alg none", idp.sign(&json!({ "alg": "none" }), &claims("ana")), wire::ErrorCode::Unauthenticated, "\"none\""),
        (
            "an algorithm not taken",
            idp.sign(&json!({ "alg": "HS384" }), &claims("ana")),
            wire::ErrorCode::Unauthenticated,
            "HS384",
        ),
        // HS256 naming an RSA key (the key-confusion attack): HS256 is only ever checked against
        // the shared secret, never a published key.
        (
            "HS256 naming the RSA kid",
            idp.hs256_keyed_with_rsa_public_key(&claims("ana")),
            wire::ErrorCode::Unauthenticated,
            "bad signature",
        ),
        ("wrong audience", idp.rs256(&wrong_audience), wire::ErrorCode::Unauthenticated, "audience"),
        ("wrong issuer", idp.es256(&wrong_issuer), wire::ErrorCode::Unauthenticated, "issuer"),
        ("expired", idp.hs256(&expired), wire::ErrorCode::TokenExpired, "expired"),
        ("not yet valid", idp.rs256(&not_yet), wire::ErrorCode::Unauthenticated, "nbf"),
        ("no sub", idp.rs256(&no_subject), wire::ErrorCode::Unauthenticated, "sub"),
        ("no exp", idp.rs256(&no_expiry), wire::ErrorCode::Unauthenticated, "exp"),
        ("not a JWT", "garbage".to_owned(), wire::ErrorCode::Unauthenticated, "not a JWT"),
    ];
    for (case, token, code, says) in cases {
        let e = refused(&server, &token).await;
        assert!(matches!(e, ClientError::Http { status: 401, .. }), "{case}: {e}");
        assert_eq!(code_of(&e), code, "{case}: {e}");
        assert!(message_of(&e).contains(says), "{case}: {e} should say {says:?}");
    }
}

#[tokio::test]
async fn without_app_tokens_configured_an_app_token_is_just_invalid() {
    let idp = FakeIdentityProvider::start().await;
    let server = TestServer::start();
    let e = refused(&server, &idp.hs256(&claims("ana"))).await;
    assert_eq!(code_of(&e), wire::ErrorCode::Unauthenticated);
    assert_eq!(message_of(&e), "invalid access token");
    // And the server's own users still log in and connect with app tokens configured.
    let server = server_for(&idp).await;
    server.user("ana").await.connect_synced(0).await;
}
