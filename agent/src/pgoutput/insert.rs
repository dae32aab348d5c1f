//! `I`: a new row.

use super::reader::Reader;
use super::{DecodeError, TupleData};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation: u32,
    pub new: TupleData,
}

impl Insert {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Insert");
        let relation = r.u32()?;
        match r.u8()? {
            b'N' => Ok(Insert {
                relation,
                new: TupleData::decode(r)?,
            }),
            other => Err(r.invalid(format!("expected 'N', got {:?}", other as char))),
        }
    }
}
