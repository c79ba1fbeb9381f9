//! The guest command line: `role=NAME key=value ...`, space separated.

/// A parsed view of the command line.
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    /// Wraps the raw command line.
    pub fn new(text: &'a str) -> Self {
        Cmdline { text }
    }

    /// The value of `key=value`, the last one if repeated.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text
            .split_ascii_whitespace()
            .filter_map(|word| word.split_once('='))
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value)
            .next_back()
    }

    /// An unsigned number (decimal, or hex with 0x), or `default` when absent.
    pub fn get_u64(&self, key: &str, default: u64) -> Result<u64, &'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => {
                let parsed = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => value.parse(),
                };
                parsed.map_err(|_| value)
            }
        }
    }
}
