//! TupleData: the column values of a row, in text form (protocol version 1).

use super::DecodeError;
use super::reader::Reader;

/// One column's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change (UPDATE): not sent, keep the current one.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(String),
    /// The value in the type's binary format (when the `binary` option is on).
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    pub values: Vec<Value>,
}

impl TupleData {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = r.u16()?;
        let mut values = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            values.push(match r.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = r.u32()? as usize;
                    let bytes = r.take(len)?;
                    Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| r.invalid("text value is not UTF-8"))?)
                }
                b'b' => {
                    let len = r.u32()? as usize;
                    Value::Binary(r.take(len)?.to_vec())
                }
                other => return Err(r.invalid(format!("unknown column kind {:?}", other as char))),
            });
        }
        Ok(TupleData { values })
    }
}
