//! A progress bar for downloads (name, bytes, rate) on a terminal; nothing at all
//! when stderr is not one, so logs and pipes stay clean.

use std::io::{IsTerminal, Read};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R: Read> Progress<R> {
    pub fn new(inner: R, name: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} {bytes}/{total_bytes} {binary_bytes_per_sec} [{bar:30}] {eta}"
            } else {
                "{msg} {bytes} {binary_bytes_per_sec} {spinner}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("Downloading {name}"));
            // Drawn at once: a short download would otherwise finish unseen.
            bar.tick();
            bar
        });
        Progress { inner, bar }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

impl<R> Drop for Progress<R> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
