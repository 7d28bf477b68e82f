//! Kernel console: COM1 natively, `console_io` under Xen PV and PVH (Xen
//! keeps the UART for itself; a PVH dom0's COM1 writes are silently dropped,
//! `ns16550_endboot`), plus a `log::Log` backend on top.

use core::fmt::{self, Write};

use crate::platform::{self, PlatformServices};
use crate::sync::SpinLock;
use crate::x86;

const COM1: u16 = 0x3f8;

/// Serialises whole lines from different callers (and CPUs). Held with
/// events masked: an interrupt handler that logs on the same CPU would
/// otherwise spin on a lock its own CPU holds.
static LOCK: SpinLock<()> = SpinLock::new(());

fn masked() -> pvops::EventsMasked<'static> {
    pvops::EventsMasked::new(&crate::smp::CPUS)
}

/// Programs COM1 for 115200 8N1 (native only).
pub fn init_serial() {
    // SAFETY: standard 16550 programming on COM1, native ring 0.
    unsafe {
        x86::outb(COM1 + 1, 0x00); // no interrupts
        x86::outb(COM1 + 3, 0x80); // DLAB
        x86::outb(COM1, 0x01); // divisor 1 = 115200
        x86::outb(COM1 + 1, 0x00);
        x86::outb(COM1 + 3, 0x03); // 8N1
        x86::outb(COM1 + 2, 0xc7); // FIFO on, cleared
        x86::outb(COM1 + 4, 0x0b); // DTR RTS OUT2
    }
}

/// Bytes to COM1 (the native console), `\n` as CRLF.
pub(crate) fn serial_write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            serial_byte(b'\r');
        }
        serial_byte(b);
    }
}

fn serial_byte(b: u8) {
    // SAFETY: COM1 port I/O, native ring 0.
    unsafe {
        let mut spins = 0u32;
        while x86::inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        x86::outb(COM1, b);
    }
}

/// Writes raw bytes to the platform console without taking the lock (used
/// directly by the panic path).
pub fn write_bytes_unlocked(bytes: &[u8]) {
    platform::get().console_write(bytes);
}

/// A line buffer that flushes to the console when full and on drop.
struct LineWriter {
    buf: [u8; 256],
    len: usize,
}

impl LineWriter {
    const fn new() -> Self {
        Self { buf: [0; 256], len: 0 }
    }
    fn flush(&mut self) {
        write_bytes_unlocked(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints formatted text atomically with respect to other console users.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let _m = masked();
    let _g = LOCK.lock();
    let mut w = LineWriter::new();
    let _ = w.write_fmt(args);
}

/// Prints formatted text without the lock (panic path).
pub fn print_fmt_unlocked(args: fmt::Arguments<'_>) {
    let mut w = LineWriter::new();
    let _ = w.write_fmt(args);
}

/// Writes raw bytes (e.g. a user buffer) under the console lock.
pub fn write_bytes(bytes: &[u8]) {
    let _m = masked();
    let _g = LOCK.lock();
    write_bytes_unlocked(bytes);
}

/// `print!` to the kernel console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// `println!` to the kernel console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            print_fmt(format_args!("[{:<5}] {}\n", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the console as the `log` backend (idempotent).
pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
