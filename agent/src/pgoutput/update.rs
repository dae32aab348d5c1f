//! `U`: a changed row, with the old key (`K`, when the key changed) or the whole old row (`O`, replica identity
//! FULL) before the new row.

use super::reader::Reader;
use super::{DecodeError, TupleData};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation: u32,
    /// The old key columns (`K`) or old row (`O`); `None` when the key did not change.
    pub old: Option<TupleData>,
    /// True when `old` is the whole old row.
    pub old_is_full_row: bool,
    pub new: TupleData,
}

impl Update {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Update");
        let relation = r.u32()?;
        let mut old = None;
        let mut old_is_full_row = false;
        let mut tag = r.u8()?;
        if tag == b'K' || tag == b'O' {
            old_is_full_row = tag == b'O';
            old = Some(TupleData::decode(r)?);
            tag = r.u8()?;
        }
        if tag != b'N' {
            return Err(r.invalid(format!("expected 'N', got {:?}", tag as char)));
        }
        Ok(Update {
            relation,
            old,
            old_is_full_row,
            new: TupleData::decode(r)?,
        })
    }
}
