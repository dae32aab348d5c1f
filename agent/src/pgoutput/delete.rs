//! `D`: a removed row, identified by its key (`K`) or whole old row (`O`).

use super::reader::Reader;
use super::{DecodeError, TupleData};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation: u32,
    pub old: TupleData,
    pub old_is_full_row: bool,
}

impl Delete {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Delete");
        let relation = r.u32()?;
        let tag = r.u8()?;
        if tag != b'K' && tag != b'O' {
            return Err(r.invalid(format!("expected 'K' or 'O', got {:?}", tag as char)));
        }
        Ok(Delete {
            relation,
            old_is_full_row: tag == b'O',
            old: TupleData::decode(r)?,
        })
    }
}
