//! `T`: TRUNCATE of one or more tables.

use super::DecodeError;
use super::reader::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relations: Vec<u32>,
}

impl Truncate {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Truncate");
        let count = r.u32()?;
        let options = r.u8()?;
        let mut relations = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            relations.push(r.u32()?);
        }
        Ok(Truncate {
            cascade: options & 1 != 0,
            restart_identity: options & 2 != 0,
            relations,
        })
    }
}
