//! Microbenchmark: what verifying one token costs (`auth::Verifier::verify_bearer`), HS256 and ES256.
//!
//! Every HTTP request with a token pays this once; a websocket pays it once
//! per connection (at `connection_init`), not per message. The keys are made
//! here: an HS256 secret and an ES256 key pair generated for the run.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;
use talus_tally::auth::{AuthConfig, Verifier};

// The server's allocator, so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "a-benchmark-secret-of-32-bytes!!";

fn bench_verify(c: &mut Criterion) {
    let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("es256.pem");
    std::fs::write(
        &public,
        key.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let verifier = Verifier::from_config(&AuthConfig {
        secret: Some(SECRET.into()),
        public_key: Some(public),
        audience: Some("talus".into()),
        // The signature check itself, not the cache in front of it.
        cache_entries: 0,
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({ "sub": "alice", "name": "Alice", "exp": exp, "aud": "talus" });
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut group = c.benchmark_group("verify");
    group.measurement_time(Duration::from_secs(3));
    for (name, token) in [("hs256", hs), ("es256", es)] {
        let bearer = format!("Bearer {token}");
        assert!(verifier.verify_bearer(&bearer).is_ok());
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify_bearer(&bearer).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
