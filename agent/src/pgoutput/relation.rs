//! `R`: a table's description, sent before its first change in a decoding session.

use super::DecodeError;
use super::reader::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.message("Relation");
        let oid = r.u32()?;
        let namespace = r.cstr()?;
        let name = r.cstr()?;
        let replica_identity = r.u8()?;
        let count = r.u16()?;
        let mut columns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let flags = r.u8()?;
            columns.push(Column {
                key: flags & 1 == 1,
                name: r.cstr()?,
                type_oid: r.u32()?,
                type_modifier: r.i32()?,
            });
        }
        Ok(Relation {
            oid,
            namespace: if namespace.is_empty() {
                "pg_catalog".into()
            } else {
                namespace
            },
            name,
            replica_identity,
            columns,
        })
    }
}
