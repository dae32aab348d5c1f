//! Bearer-token authentication of `/v1/...`: the token is read from a file (a Kubernetes Secret in a Pod), kept
//! out of every log, error and response, and compared in constant time.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::error::{ErrorKind, UsageError};

/// The API's bearer token.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The shortest token accepted.
const MIN_LEN: usize = 16;

impl Token {
    /// The token in `path` (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read the token file {}: {e}", path.display())))?;
        Token::new(text.trim()).map_err(|e| UsageError(format!("{}: {e}", path.display())))
    }

    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < MIN_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the API token must be at least {MIN_LEN} printable characters without spaces (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Token(text.to_string()))
    }

    /// A fresh token: 32 bytes from the operating system's random source, as 64 hex digits.
    pub fn random() -> Result<Self, std::io::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }

    /// The token's text, to hand to a client (the command line talking to its own agent).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Refuses a request without the right `Authorization: Bearer TOKEN` with 401.
pub async fn require(State(token): State<std::sync::Arc<Token>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if token.matches(t) => next.run(req).await,
        Some(_) => unauthorized("the bearer token is not this agent's token"),
        None => unauthorized("send the agent's token as `Authorization: Bearer TOKEN`"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(ErrorKind::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_stay_out_of_debug() {
        let t = Token::new("0123456789abcdef0123").expect("token");
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches("0123456789abcdef01234"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("0123"));
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in it, long enough").is_err());
    }

    #[test]
    fn random_tokens_are_long_hex_and_differ() {
        let (a, b) = (Token::random().expect("random"), Token::random().expect("random"));
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(Token::new(a.expose()).is_ok());
        assert!(!a.matches(b.expose()));
    }
}
