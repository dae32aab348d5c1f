//! A replayed change as a statement with parameters: the SQL text depends only on the relation and the shape of
//! the change (which columns it wrote, which identity values are NULL), so it is prepared once per session and
//! executed with the change's values. Values travel in PostgreSQL's text format, as untyped literals would: the
//! fork parses each with the column's input function, so a value fails on a changed schema exactly where a
//! literal would. The same statement renders with literals for failure samples and tests.

use bytes::BytesMut;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

use crate::pg::quote_literal;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Null,
    /// A value in its text form.
    Text(String),
    /// A `bytea` value's hex digits (sent as `\x<hex>`).
    Hex(String),
}

impl Param {
    fn literal(&self) -> String {
        match self {
            Param::Null => "NULL".into(),
            Param::Text(t) => quote_literal(t),
            Param::Hex(h) => format!("'\\x{h}'"),
        }
    }

    /// The parameter as sent: text format, whatever type the fork inferred for its placeholder.
    pub fn as_text(&self) -> TextParam<'_> {
        TextParam(self)
    }
}

/// One piece of a statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Sql(String),
    /// The n-th parameter (0-based).
    Param(usize),
}

/// A statement with numbered placeholders and the values that go in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    pieces: Vec<Piece>,
    params: Vec<Param>,
    /// The text with `$n` placeholders, the key of prepared statements.
    sql: String,
}

impl Shaped {
    /// The text to prepare, with `$1`, `$2`, ... placeholders.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The statement with its values inlined as literals (what a failure shows as its sample).
    pub fn literal(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Sql(s) => s.clone(),
                Piece::Param(i) => self.params[*i].literal(),
            })
            .collect()
    }
}

/// Builds a [`Shaped`] statement piece by piece.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    pieces: Vec<Piece>,
    params: Vec<Param>,
}

impl Builder {
    pub fn sql(&mut self, text: &str) -> &mut Self {
        match self.pieces.last_mut() {
            Some(Piece::Sql(s)) => s.push_str(text),
            _ => self.pieces.push(Piece::Sql(text.to_string())),
        }
        self
    }

    pub fn param(&mut self, value: Param) -> &mut Self {
        self.pieces.push(Piece::Param(self.params.len()));
        self.params.push(value);
        self
    }

    pub fn build(self) -> Shaped {
        let sql = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Sql(s) => s.clone(),
                Piece::Param(i) => format!("${}", i + 1),
            })
            .collect();
        Shaped {
            pieces: self.pieces,
            params: self.params,
            sql,
        }
    }
}

/// A parameter sent in text format, accepted for any placeholder type.
#[derive(Debug)]
pub struct TextParam<'a>(&'a Param);

impl ToSql for TextParam<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Param::Null => return Ok(IsNull::Yes),
            Param::Text(t) => out.extend_from_slice(t.as_bytes()),
            Param::Hex(h) => {
                out.extend_from_slice(b"\\x");
                out.extend_from_slice(h.as_bytes());
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_and_literals_inline_the_same_values() {
        let mut b = Builder::default();
        b.sql("UPDATE \"t$1\" SET a = ")
            .param(Param::Text("it's".into()))
            .sql(", b = ")
            .param(Param::Null)
            .sql(", c = ")
            .param(Param::Hex("00ff".into()))
            .sql(" WHERE id = ")
            .param(Param::Text("7".into()));
        let s = b.build();
        // A `$1` inside a quoted identifier is text, not a placeholder.
        assert_eq!(s.sql(), "UPDATE \"t$1\" SET a = $1, b = $2, c = $3 WHERE id = $4");
        assert_eq!(
            s.literal(),
            "UPDATE \"t$1\" SET a = 'it''s', b = NULL, c = '\\x00ff' WHERE id = '7'"
        );
        assert_eq!(s.params().len(), 4);
    }

    #[test]
    fn parameters_go_in_text_format() {
        let mut out = BytesMut::new();
        let hex = Param::Hex("00ab".into());
        assert!(matches!(hex.as_text().to_sql(&Type::BYTEA, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], b"\\x00ab");
        assert!(matches!(
            Param::Null.as_text().to_sql(&Type::INT4, &mut out),
            Ok(IsNull::Yes)
        ));
        assert!(matches!(Param::Null.as_text().encode_format(&Type::INT4), Format::Text));
        assert!(TextParam::accepts(&Type::JSONB));
    }
}
