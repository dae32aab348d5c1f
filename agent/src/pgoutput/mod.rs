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
