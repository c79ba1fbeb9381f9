//! Console output: `print!`/`println!` format into a stack buffer and hand it
//! to the console device in one exit per 256 bytes.
use core::fmt::{self, Write};
use ftvm_abi::mmio::console;

const LINE_BYTES: usize = 256;

struct LineWriter {
    buf: [u8; LINE_BYTES],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == LINE_BYTES {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

/// Sends raw bytes to the console device (at most 64 KiB per exit).
pub fn write_bytes(bytes: &[u8]) {
    for chunk in bytes.chunks(ftvm_abi::buf::MAX_LEN) {
        let descriptor = ftvm_abi::buf::pack(chunk.as_ptr() as u64, chunk.len())
            .expect("kernel buffers live below 2^48");
        crate::drivers::write(console::BASE, console::WRITE, descriptor);
    }
}

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments) {
    let mut writer = LineWriter { buf: [0; LINE_BYTES], len: 0 };
    // Our writer never fails; a Display impl that does just truncates output.
    let _ = writer.write_fmt(args);
    writer.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_args(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print_args(format_args!("{}\n", format_args!($($arg)*))) };
}
