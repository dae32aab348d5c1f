//! `C`: the end of a transaction.

use super::DecodeError;
use super::reader::Reader;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

impl Commit {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Commit");
        Ok(Commit {
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
        })
    }
}
