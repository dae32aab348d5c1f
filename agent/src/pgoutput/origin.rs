//! `O`: the replication origin of a transaction (on a sandbox: the apply worker's `pg_<subscription oid>`).

use super::DecodeError;
use super::reader::Reader;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

impl Origin {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Origin");
        Ok(Origin {
            commit_lsn: Lsn(r.u64()?),
            name: r.cstr()?,
        })
    }
}
