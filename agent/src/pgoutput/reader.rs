//! Big-endian reading with truncation errors that name the message.

use super::DecodeError;

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, message: "?" }
    }

    /// Names the message being read (for errors).
    pub(crate) fn message(&mut self, name: &'static str) {
        self.message = name;
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                needed: n - self.data.len(),
            });
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A NUL-terminated string.
    pub(crate) fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self.data.iter().position(|b| *b == 0).ok_or(DecodeError::Invalid {
            message: self.message,
            detail: "string without terminating NUL".into(),
        })?;
        let text = String::from_utf8(self.data[..end].to_vec()).map_err(|_| DecodeError::Invalid {
            message: self.message,
            detail: "string is not UTF-8".into(),
        })?;
        self.data = &self.data[end + 1..];
        Ok(text)
    }

    pub(crate) fn invalid(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            message: self.message,
            detail: detail.into(),
        }
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.data;
        self.data = &[];
        rest
    }
}
