//! `B`: the start of a transaction.

use super::DecodeError;
use super::reader::Reader;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01.
    pub commit_time: i64,
    pub xid: u32,
}

impl Begin {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Begin");
        Ok(Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
            xid: r.u32()?,
        })
    }
}
