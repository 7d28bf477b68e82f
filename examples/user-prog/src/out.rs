//! Console output: one line formatted into a stack buffer, one `write`.

use core::fmt;

/// A line of at most 240 bytes (longer output is cut).
pub struct Line {
    buf: [u8; 240],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 240], len: 0 }
    }

    /// Ends the line and writes it.
    pub fn send(mut self) {
        let _ = fmt::Write::write_str(&mut self, "\n");
        if self.len == self.buf.len() {
            self.buf[self.len - 1] = b'\n';
        }
        crate::sys::write(&self.buf[..self.len]);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `println!` for the console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut line = $crate::out::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.send();
    }};
}
