//! Token verification: who is asking, from a JWT issued by the team's identity provider.
//!
//! The server never runs a login or stores passwords: it checks a token's
//! signature (HS256 with a shared secret, or RS256/ES256 with a public key or
//! a JWKS file of several keys chosen by `kid`), its `exp` (always required),
//! and its `iss`/`aud` when configured. The transports (`http.rs`, `ws.rs`,
//! `sse.rs` through `http.rs`) call `Verifier::verify_bearer`; everything
//! past them only sees the `User` it yields. Signature checks are the
//! `jsonwebtoken` crate's.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Longest `sub` (userId) or `name` a token may carry, in bytes.
const MAX_CLAIM_BYTES: usize = 200;

/// Longest token accepted, in bytes: far above any real JWT, far below a body limit.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What the operator configured (`--jwt-*` flags).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HS256 shared secret (`--jwt-secret`).
    pub secret: Option<String>,
    /// A PEM public key (RS256 or ES256) or a JWKS JSON file (`--jwt-public-key`).
    pub public_key: Option<PathBuf>,
    /// Required `iss`, when given.
    pub issuer: Option<String>,
    /// Required `aud`, when given.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` (and `nbf`), in seconds.
    pub leeway_secs: u64,
    /// Verified tokens remembered, least recently used first out (`--jwt-cache-entries`; 0: none).
    pub cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            public_key: None,
            issuer: None,
            audience: None,
            leeway_secs: 5,
            cache_entries: 10_000,
        }
    }
}

impl AuthConfig {
    /// Whether a key is configured, which turns authentication on.
    pub fn is_on(&self) -> bool {
        self.secret.is_some() || self.public_key.is_some()
    }
}

/// The authenticated caller, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The token's `sub`.
    pub id: String,
    /// The token's `name`, if any.
    pub name: Option<String>,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl User {
    /// How long until the token stops being accepted (its `exp` plus `leeway`); zero if it already has.
    pub fn remaining(&self, leeway_secs: u64) -> Duration {
        let end = Duration::from_secs(self.expires_at.saturating_add(leeway_secs));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        end.saturating_sub(now)
    }
}

/// Why a token was refused. The message is for the client and says nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is required: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's signature does not verify with the configured key")]
    BadSignature,
    #[error("the token has expired; get a new one")]
    Expired,
    #[error("the token is not valid here: {0}")]
    Rejected(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    exp: u64,
}

/// One key and the validation that goes with its algorithm.
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// Checks tokens against the configured keys. Built once at start.
pub struct Verifier {
    /// The HS256 key, if a secret is configured.
    hmac: Option<Key>,
    /// A single PEM public key (used whatever the token's `kid`).
    single: Option<Key>,
    /// Keys of a JWKS file, by `kid`.
    by_kid: HashMap<String, Key>,
    leeway_secs: u64,
    /// Tokens already verified, by their text: a client sends the same token
    /// with every request, and checking its signature and claims again cost
    /// about a sixth of a small mutation's server CPU (BENCHMARKS.md). An
    /// entry is only used until its `exp` (plus the leeway), as the token is.
    cache: Option<Mutex<LruCache<Box<str>, User>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_key", &self.single.is_some())
            .field("jwks_keys", &self.by_kid.len())
            .finish()
    }
}

impl Verifier {
    /// The verifier a config asks for; `None` when authentication is off.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Option<Verifier>> {
        if !config.is_on() {
            return Ok(None);
        }
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_secs;
            // A configured issuer or audience must be in the token, not only
            // match when present.
            let mut required = vec!["exp", "sub"];
            match &config.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                // Without a configured audience a token's `aud` is not checked.
                None => v.validate_aud = false,
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hmac = match &config.secret {
            Some(secret) if secret.len() < 16 => anyhow::bail!(
                "the JWT secret is {} bytes long; use at least 16 (32 random bytes are best)",
                secret.len()
            ),
            Some(secret) => Some(Key {
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256),
            }),
            None => None,
        };
        let mut single = None;
        let mut by_kid = HashMap::new();
        if let Some(path) = &config.public_key {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read the JWT public key {}", path.display()))?;
            if text.trim_start().starts_with('{') {
                for (kid, (key, alg)) in jwks(&text, path)? {
                    by_kid.insert(
                        kid,
                        Key {
                            key,
                            validation: validation(alg),
                        },
                    );
                }
            } else {
                let (key, alg) = pem(&text, path)?;
                single = Some(Key {
                    key,
                    validation: validation(alg),
                });
            }
        }
        Ok(Some(Verifier {
            hmac,
            single,
            by_kid,
            leeway_secs: config.leeway_secs,
            cache: NonZeroUsize::new(config.cache_entries).map(|n| Mutex::new(LruCache::new(n))),
        }))
    }

    /// The clock skew allowed on `exp`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Verifies the value of an `Authorization` header (or of a websocket
    /// payload's `authorization`): `Bearer <token>`.
    pub fn verify_bearer(&self, value: &str) -> Result<User, AuthError> {
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(AuthError::Malformed(
                    "expected the form 'Bearer <token>'".into(),
                ))
            }
        };
        self.verify(token)
    }

    /// Verifies a bare token.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "it is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if let Some(cache) = &self.cache {
            if let Some(user) = cache.lock().get(token) {
                // Verified before; only time can have made it invalid since.
                return if user.remaining(self.leeway_secs).is_zero() {
                    Err(AuthError::Expired)
                } else {
                    Ok(user.clone())
                };
            }
        }
        let user = self.verify_uncached(token)?;
        if let Some(cache) = &self.cache {
            cache.lock().put(token.into(), user.clone());
        }
        Ok(user)
    }

    /// Checks a token's signature and claims.
    fn verify_uncached(&self, token: &str) -> Result<User, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            _ => match &header.kid {
                Some(kid) if !self.by_kid.is_empty() => self.by_kid.get(kid),
                _ => self.single.as_ref(),
            },
        }
        .ok_or_else(|| {
            AuthError::Rejected(format!(
                "no configured key verifies {:?} tokens{}",
                header.alg,
                header
                    .kid
                    .as_deref()
                    .map(|k| format!(" with kid '{k}'"))
                    .unwrap_or_default()
            ))
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        // A NUL cannot be stored as text (PostgreSQL refuses it), and no
        // identity provider issues one.
        if claims.sub.trim().is_empty()
            || claims.sub.len() > MAX_CLAIM_BYTES
            || claims.sub.contains('\0')
        {
            return Err(AuthError::Rejected(format!(
                "sub must be a user id of 1 to {MAX_CLAIM_BYTES} bytes without NUL characters"
            )));
        }
        let name = claims
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && n.len() <= MAX_CLAIM_BYTES && !n.contains('\0'));
        Ok(User {
            id: claims.sub,
            name,
            expires_at: claims.exp,
        })
    }
}

/// The refusal a `jsonwebtoken` error stands for.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAudience => {
            AuthError::Rejected("its audience (aud) is not this server's".into())
        }
        ErrorKind::InvalidIssuer => {
            AuthError::Rejected("its issuer (iss) is not the configured one".into())
        }
        ErrorKind::ImmatureSignature => AuthError::Rejected("it is not valid yet (nbf)".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Rejected(format!("it has no {c} claim")),
        ErrorKind::InvalidAlgorithm => {
            AuthError::Rejected("its algorithm is not the configured key's".into())
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Malformed(format!("the {c} claim has the wrong type"))
        }
        ErrorKind::Json(_) => AuthError::Malformed("its claims are not the expected JSON".into()),
        _ => AuthError::Malformed("it is not a JWT (header.claims.signature)".into()),
    }
}

/// A PEM public key: RSA (RS256) or EC P-256 (ES256).
fn pem(text: &str, path: &Path) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_ec_pem(text.as_bytes()) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
        return Ok((key, Algorithm::RS256));
    }
    anyhow::bail!(
        "{} is neither a PEM public key (RSA for RS256, EC P-256 for ES256) nor a JWKS file",
        path.display()
    )
}

/// A JWKS file's keys, by `kid`; every key needs one, and an algorithm
/// (its `alg`, or RS256 for RSA and ES256 for P-256 keys).
fn jwks(text: &str, path: &Path) -> anyhow::Result<Vec<(String, (DecodingKey, Algorithm))>> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
    let set: JwkSet = serde_json::from_str(text).with_context(|| {
        format!(
            "{} is not a JWKS file ({{\"keys\": [...]}})",
            path.display()
        )
    })?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .clone()
            .with_context(|| format!("key {i} of {} has no kid", path.display()))?;
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => format!("{a:?}")
                .parse::<Algorithm>()
                .ok()
                .filter(|a| matches!(a, Algorithm::RS256 | Algorithm::ES256)),
            (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
            (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            _ => None,
        }
        .with_context(|| {
            format!(
                "key '{kid}' of {} is not an RS256 or ES256 key",
                path.display()
            )
        })?;
        let key = DecodingKey::from_jwk(jwk)
            .with_context(|| format!("key '{kid}' of {} cannot be used", path.display()))?;
        keys.push((kid, (key, alg)));
    }
    anyhow::ensure!(!keys.is_empty(), "{} holds no keys", path.display());
    Ok(keys)
}

/// A HS256 token for `sub` valid for `ttl`: for development and examples (`talus-tally token`).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    name: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = Claims {
        sub: sub.to_string(),
        name: name.map(str::to_string),
        exp: (now + ttl).as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("could not sign the token")
}

/// A duration such as `90s`, `15m`, `1h` or `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{s}': the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|t| *t > 0 && *t <= 366 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{s}' must be more than 0 and at most a year"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(audience: Option<&str>) -> Verifier {
        Verifier::from_config(&AuthConfig {
            secret: Some("a-test-secret-of-enough-bytes".into()),
            audience: audience.map(str::to_string),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_as_its_user() {
        let token = mint_hs256(
            "a-test-secret-of-enough-bytes",
            "alice",
            Some("Alice"),
            Duration::from_secs(60),
        )
        .unwrap();
        let user = verifier(None)
            .verify_bearer(&format!("Bearer {token}"))
            .unwrap();
        assert_eq!(user.id, "alice");
        assert_eq!(user.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn a_cached_token_is_refused_once_its_expiry_and_the_leeway_have_passed() {
        let verifier = verifier(None);
        let token = mint_hs256(
            "a-test-secret-of-enough-bytes",
            "alice",
            None,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(verifier.verify(&token).unwrap().id, "alice");
        let cache = verifier.cache.as_ref().expect("the cache is on by default");
        assert!(
            cache.lock().contains(token.as_str()),
            "the verified token is remembered"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Time passes (the remembered expiry moves into the past, as the clock
        // would move past it): still within the leeway, then beyond it.
        cache.lock().get_mut(token.as_str()).unwrap().expires_at = now - 2;
        assert_eq!(
            verifier.verify(&token).unwrap().id,
            "alice",
            "within the 5 s leeway"
        );
        cache.lock().get_mut(token.as_str()).unwrap().expires_at = now - 60;
        assert_eq!(verifier.verify(&token), Err(AuthError::Expired));
        // A token nobody verified before, already expired, is refused as well.
        let old = Verifier::from_config(&AuthConfig {
            secret: Some("a-test-secret-of-enough-bytes".into()),
            leeway_secs: 0,
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "bob".into(),
                name: None,
                exp: now - 60,
            },
            &EncodingKey::from_secret(b"a-test-secret-of-enough-bytes"),
        )
        .unwrap();
        assert_eq!(old.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = mint_hs256(
            "another-secret-of-enough-bytes",
            "alice",
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(verifier(None).verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_token_without_the_configured_audience_is_refused() {
        let token = mint_hs256(
            "a-test-secret-of-enough-bytes",
            "alice",
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            verifier(Some("talus")).verify(&token),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn garbage_and_other_schemes_are_malformed() {
        let v = verifier(None);
        assert!(matches!(
            v.verify("not.a.jwt"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify_bearer("Basic abc"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
    }
}
