//! A decoder for PostgreSQL's `pgoutput` logical replication protocol (version 1), one file per message kind.
//! Input is one message as produced by the plugin (a row of `pg_logical_slot_get_binary_changes`, or the payload
//! of an XLogData frame).

mod begin;
mod commit;
mod delete;
mod insert;
mod message;
mod origin;
mod reader;
mod relation;
mod truncate;
mod tuple;
mod type_msg;
mod update;

pub use begin::Begin;
pub use commit::Commit;
pub use delete::Delete;
pub use insert::Insert;
pub use message::LogicalMessage;
pub use origin::Origin;
pub use relation::{Column, Relation};
pub use truncate::Truncate;
pub use tuple::{TupleData, Value};
pub use type_msg::TypeMessage;
pub use update::Update;

/// A malformed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("pgoutput {message} message ends early (needed {needed} more bytes)")]
    Truncated { message: &'static str, needed: usize },
    #[error("pgoutput {message} message: {detail}")]
    Invalid { message: &'static str, detail: String },
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
}

/// Decodes one pgoutput message.
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, body) = data.split_first().ok_or(DecodeError::Empty)?;
    let mut r = reader::Reader::new(body);
    Ok(match tag {
        b'B' => Message::Begin(Begin::decode(&mut r)?),
        b'C' => Message::Commit(Commit::decode(&mut r)?),
        b'O' => Message::Origin(Origin::decode(&mut r)?),
        b'R' => Message::Relation(Relation::decode(&mut r)?),
        b'Y' => Message::Type(TypeMessage::decode(&mut r)?),
        b'I' => Message::Insert(Insert::decode(&mut r)?),
        b'U' => Message::Update(Update::decode(&mut r)?),
        b'D' => Message::Delete(Delete::decode(&mut r)?),
        b'T' => Message::Truncate(Truncate::decode(&mut r)?),
        b'M' => Message::Message(LogicalMessage::decode(&mut r)?),
        other => return Err(DecodeError::UnknownTag(other as char)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("<toast>") => out.push(b'u'),
                Some(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    #[test]
    fn begin_and_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&b),
            Ok(Message::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 42,
                xid: 7
            }))
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&10u64.to_be_bytes());
        c.extend_from_slice(&20u64.to_be_bytes());
        c.extend_from_slice(&30i64.to_be_bytes());
        assert_eq!(
            decode(&c),
            Ok(Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_time: 30
            }))
        );
    }

    #[test]
    fn relation_and_row_changes() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut r, "public");
        cstr(&mut r, "orders");
        r.push(b'd');
        r.extend_from_slice(&2u16.to_be_bytes());
        r.push(1);
        cstr(&mut r, "id");
        r.extend_from_slice(&20u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.push(0);
        cstr(&mut r, "note");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        let Ok(Message::Relation(rel)) = decode(&r) else {
            panic!("relation")
        };
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "orders"));

        let mut i = vec![b'I'];
        i.extend_from_slice(&16384u32.to_be_bytes());
        i.push(b'N');
        tuple(&mut i, &[Some("5"), None]);
        assert_eq!(
            decode(&i),
            Ok(Message::Insert(Insert {
                relation: 16384,
                new: TupleData {
                    values: vec![Value::Text("5".into()), Value::Null]
                }
            }))
        );

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'K');
        tuple(&mut u, &[Some("5"), None]);
        u.push(b'N');
        tuple(&mut u, &[Some("6"), Some("<toast>")]);
        let Ok(Message::Update(up)) = decode(&u) else {
            panic!("update")
        };
        assert!(up.old.is_some() && !up.old_is_full_row);
        assert_eq!(up.new.values[1], Value::UnchangedToast);

        let mut d = vec![b'D'];
        d.extend_from_slice(&16384u32.to_be_bytes());
        d.push(b'O');
        tuple(&mut d, &[Some("6"), Some("x")]);
        let Ok(Message::Delete(del)) = decode(&d) else {
            panic!("delete")
        };
        assert!(del.old_is_full_row);

        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(3);
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            decode(&t),
            Ok(Message::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![1, 2]
            }))
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag('Z')));
        assert!(matches!(
            decode(b"B\x00\x01"),
            Err(DecodeError::Truncated { message: "Begin", .. })
        ));
        assert!(matches!(
            decode(b"R\x00\x00\x00\x01public"),
            Err(DecodeError::Invalid { .. })
        ));
        let mut i = vec![b'I'];
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'X');
        assert!(matches!(
            decode(&i),
            Err(DecodeError::Invalid { message: "Insert", .. })
        ));
        // Every prefix of a valid message fails cleanly.
        let mut full = vec![b'I'];
        full.extend_from_slice(&1u32.to_be_bytes());
        full.push(b'N');
        tuple(&mut full, &[Some("hello"), None]);
        for n in 1..full.len() {
            assert!(decode(&full[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }
}
