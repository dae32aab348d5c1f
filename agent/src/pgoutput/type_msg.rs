//! `Y`: a user-defined type's name, sent before a relation that uses it.

use super::DecodeError;
use super::reader::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

impl TypeMessage {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Type");
        Ok(TypeMessage {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        })
    }
}
