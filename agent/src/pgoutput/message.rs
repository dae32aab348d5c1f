//! `M`: a logical decoding message (`pg_logical_emit_message`), sent when the `messages` option is on.

use super::DecodeError;
use super::reader::Reader;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Vec<u8>,
}

impl LogicalMessage {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Message");
        let transactional = r.u8()? == 1;
        let lsn = Lsn(r.u64()?);
        let prefix = r.cstr()?;
        let len = r.u32()? as usize;
        let content = r.take(len)?.to_vec();
        let _ = r.rest();
        Ok(LogicalMessage {
            transactional,
            lsn,
            prefix,
            content,
        })
    }
}
