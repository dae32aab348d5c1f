//! libpq connection strings: parsing both forms (`key=value ...` and `postgresql://` URIs), rendering them for
//! tokio-postgres, for the subscription's `CONNECTION`, and for PostgreSQL's programs, and redacting secrets.
//! The password never appears in process arguments or logs: programs get it through `PGPASSWORD`.

use std::fmt;

/// A parsed connection string: ordered `key = value` pairs.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pairs: Vec<(String, String)>,
}

/// A connection string that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid connection string: {0}")]
pub struct ConnInfoError(pub String);

/// Keys that tokio-postgres understands; others are for libpq programs only.
const TOKIO_POSTGRES_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

impl ConnInfo {
    /// A connection string with no settings.
    pub fn empty() -> Self {
        ConnInfo { pairs: Vec::new() }
    }

    pub fn parse(text: &str) -> Result<Self, ConnInfoError> {
        let trimmed = text.trim();
        let pairs = if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
            parse_uri(trimmed)?
        } else {
            parse_key_values(trimmed)?
        };
        Ok(ConnInfo { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets `key` (replacing earlier values).
    pub fn set(&mut self, key: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.to_string()));
    }

    pub fn without(&self, key: &str) -> ConnInfo {
        ConnInfo {
            pairs: self.pairs.iter().filter(|(k, _)| k != key).cloned().collect(),
        }
    }

    pub fn password(&self) -> Option<&str> {
        self.get("password")
    }

    /// The full `key=value` form, password included: for tokio-postgres and the subscription only.
    pub fn to_secret_string(&self) -> String {
        render(&self.pairs)
    }

    /// The form for tokio-postgres: keys it does not know are left out.
    pub fn for_client(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .pairs
            .iter()
            .filter(|(k, _)| TOKIO_POSTGRES_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        render(&pairs)
    }

    /// The form for program arguments: no password (pass it with [`ConnInfo::password`] in `PGPASSWORD`).
    pub fn for_arguments(&self) -> String {
        render(&self.without("password").pairs)
    }

    /// A display form with the password replaced.
    pub fn redacted(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .pairs
            .iter()
            .map(|(k, v)| {
                if k == "password" {
                    (k.clone(), "********".to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        render(&pairs)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({})", self.redacted())
    }
}

fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_value(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!("missing \"=\" after {key:?}")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnInfoError(format!("unterminated quoted value for {key:?}")));
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError(format!("unterminated quoted value for {key:?}")));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(ConnInfoError("empty key".to_string()));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn parse_uri(text: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or(text);
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let mut pairs = Vec::new();
    let hostpart = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    pairs.push(("user".to_string(), decode(user)?));
                    pairs.push(("password".to_string(), decode(password)?));
                }
                None if !userinfo.is_empty() => pairs.push(("user".to_string(), decode(userinfo)?)),
                None => {}
            }
            host
        }
        None => authority,
    };
    if !hostpart.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for item in hostpart.split(',') {
            let (host, port) = if let Some(stripped) = item.strip_prefix('[') {
                let (h, after) = stripped
                    .split_once(']')
                    .ok_or_else(|| ConnInfoError(format!("bad host {item:?}")))?;
                (h.to_string(), after.strip_prefix(':').map(str::to_string))
            } else {
                match item.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p.to_string())),
                    None => (item.to_string(), None),
                }
            };
            hosts.push(decode(&host)?);
            ports.push(port.unwrap_or_default());
        }
        pairs.push(("host".to_string(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".to_string(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_string(), decode(db)?));
    }
    for param in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| ConnInfoError(format!("parameter {param:?} has no value")))?;
        pairs.push((decode(k)?, decode(v)?));
    }
    Ok(pairs)
}

fn decode(text: &str) -> Result<String, ConnInfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or_else(|| ConnInfoError(format!("bad escape in {text:?}")))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ConnInfoError(format!("bad escape in {text:?}")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError(format!("{text:?} is not UTF-8 once decoded")))
}

impl crate::error::Classify for ConnInfoError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_with_quotes() {
        let c = ConnInfo::parse("host=db.example port=5432 user=app password='s3 cr\\'et' dbname=shop").expect("ok");
        assert_eq!(c.get("host"), Some("db.example"));
        assert_eq!(c.password(), Some("s3 cr'et"));
        assert_eq!(c.for_arguments(), "host=db.example port=5432 user=app dbname=shop");
        assert!(!c.redacted().contains("s3"));
        assert_eq!(ConnInfo::parse(&c.to_secret_string()).expect("round trip"), c);
    }

    #[test]
    fn uri_form() {
        let c = ConnInfo::parse("postgresql://app:p%40ss@db1:5433,db2/shop?sslmode=require&application_name=x")
            .expect("ok");
        assert_eq!(c.get("user"), Some("app"));
        assert_eq!(c.password(), Some("p@ss"));
        assert_eq!(c.get("host"), Some("db1,db2"));
        assert_eq!(c.get("port"), Some("5433,"));
        assert_eq!(c.get("dbname"), Some("shop"));
        assert_eq!(c.get("sslmode"), Some("require"));
    }

    #[test]
    fn client_form_drops_libpq_only_keys() {
        let c = ConnInfo::parse("host=h sslrootcert=/x.pem user=u").expect("ok");
        assert_eq!(c.for_client(), "host=h user=u");
    }

    #[test]
    fn errors() {
        assert!(ConnInfo::parse("host").is_err());
        assert!(ConnInfo::parse("password='open").is_err());
        assert!(ConnInfo::parse("postgres://u@h/db?x").is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let c = ConnInfo::parse("user=u password=topsecret").expect("ok");
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
