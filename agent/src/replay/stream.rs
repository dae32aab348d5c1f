//! A recording's stream file: the pgoutput messages of the window's transactions as the capture slot gave them,
//! each framed with its WAL position, gzip-compressed, and checksummed (SHA-256 of the file, kept in the
//! recording's metadata and checked before anything is made from it). Commit timestamps travel in the Begin
//! messages; relations in the Relation messages, so a stream decodes on its own.
//!
//! Frame: `lsn` (u64, big-endian), `length` (u32, big-endian), `length` bytes of one pgoutput message. The stream
//! starts with the magic `UNDERSTUDY-REC1\n`.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::Digest as _;

use super::Transaction;
use super::capture::{Assembler, CaptureError};
use crate::lsn::Lsn;
use crate::pgoutput::Relation;

const MAGIC: &[u8] = b"UNDERSTUDY-REC1\n";

/// Errors reading or writing a stream file.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a recording stream (no header)")]
    NotAStream(String),
    #[error("{path} does not match its checksum (recorded {expected}, found {found}): the file is corrupt")]
    Checksum {
        path: String,
        expected: String,
        found: String,
    },
    #[error("the recording's stream is truncated or corrupt: {0}")]
    Frame(String),
    #[error(transparent)]
    Decode(#[from] CaptureError),
}

impl crate::error::Classify for StreamError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            // A recording that is not what it says is bad input: take a new one.
            StreamError::Checksum { .. } | StreamError::NotAStream(_) | StreamError::Frame(_) => ErrorKind::Invalid,
            StreamError::Io { .. } | StreamError::Decode(_) => ErrorKind::Internal,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StreamError {
    let what = what.into();
    move |source| StreamError::Io { what, source }
}

/// Writes frames into a stream file.
pub struct StreamWriter {
    out: GzEncoder<BufWriter<std::fs::File>>,
    pub messages: u64,
    pub bytes_in: u64,
}

impl StreamWriter {
    pub fn create(path: &Path) -> Result<Self, StreamError> {
        let file = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
        let mut out = GzEncoder::new(BufWriter::new(file), Compression::fast());
        out.write_all(MAGIC).map_err(io("writing the stream header"))?;
        Ok(StreamWriter {
            out,
            messages: 0,
            bytes_in: 0,
        })
    }

    pub fn push(&mut self, lsn: Lsn, message: &[u8]) -> Result<(), StreamError> {
        let length = u32::try_from(message.len()).map_err(|_| StreamError::Frame("a message over 4 GiB".into()))?;
        self.out
            .write_all(&lsn.0.to_be_bytes())
            .map_err(io("writing the stream"))?;
        self.out
            .write_all(&length.to_be_bytes())
            .map_err(io("writing the stream"))?;
        self.out.write_all(message).map_err(io("writing the stream"))?;
        self.messages += 1;
        self.bytes_in += message.len() as u64;
        Ok(())
    }

    /// Finishes the file (flushed and synced).
    pub fn finish(self) -> Result<(), StreamError> {
        let buffered = self.out.finish().map_err(io("finishing the stream"))?;
        let file = buffered.into_inner().map_err(|e| StreamError::Io {
            what: "flushing the stream".into(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io("syncing the stream"))
    }
}

/// The SHA-256 of a file, in hex.
pub fn checksum(path: &Path) -> Result<String, StreamError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `path` against its recorded checksum.
pub fn verify(path: &Path, expected: &str) -> Result<(), StreamError> {
    let found = checksum(path)?;
    if found != expected {
        return Err(StreamError::Checksum {
            path: path.display().to_string(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

/// Reads a stream file back as whole transactions.
pub struct StreamReader {
    input: BufReader<GzDecoder<std::fs::File>>,
    assembler: Assembler,
    relations: HashMap<u32, Relation>,
    /// Relation messages read so far (a change of the relations between two transactions).
    pub relation_messages: u64,
}

impl StreamReader {
    pub fn open(path: &Path) -> Result<Self, StreamError> {
        let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut input = BufReader::new(GzDecoder::new(file));
        let mut magic = [0u8; MAGIC.len()];
        input
            .read_exact(&mut magic)
            .map_err(|_| StreamError::NotAStream(path.display().to_string()))?;
        if magic != MAGIC {
            return Err(StreamError::NotAStream(path.display().to_string()));
        }
        Ok(StreamReader {
            input,
            assembler: Assembler::default(),
            relations: HashMap::new(),
            relation_messages: 0,
        })
    }

    /// Relations seen so far.
    pub fn relations(&self) -> &HashMap<u32, Relation> {
        &self.relations
    }

    /// The next frame, `None` at the end of the stream.
    fn frame(&mut self) -> Result<Option<(Lsn, Vec<u8>)>, StreamError> {
        let mut head = [0u8; 12];
        match self.input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(StreamError::Frame(e.to_string())),
        }
        self.input
            .read_exact(&mut head[1..])
            .map_err(|e| StreamError::Frame(e.to_string()))?;
        let lsn = u64::from_be_bytes(head[..8].try_into().map_err(|_| StreamError::Frame("frame".into()))?);
        let length = u32::from_be_bytes(head[8..].try_into().map_err(|_| StreamError::Frame("frame".into()))?);
        let mut message = vec![0u8; length as usize];
        self.input
            .read_exact(&mut message)
            .map_err(|e| StreamError::Frame(e.to_string()))?;
        Ok(Some((Lsn(lsn), message)))
    }

    /// The next whole transaction, `None` at the end.
    pub fn next_transaction(&mut self) -> Result<Option<Transaction>, StreamError> {
        while let Some((lsn, message)) = self.frame()? {
            if message.first() == Some(&b'R') {
                self.relation_messages += 1;
            }
            if let Some(tx) = self.assembler.push(lsn, &message, &mut self.relations)? {
                return Ok(Some(tx));
            }
        }
        Ok(None)
    }
}
