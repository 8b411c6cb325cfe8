//! Progress bars on standard error for the long commands (`demo`, `pipeline run`). They are
//! drawn only on a terminal (indicatif hides them otherwise, so logs and pipes get plain lines),
//! and text written through [`say`] while a bar is shown goes above it instead of through it.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::emit;

/// The bar on screen now, if any: [`say`] clears it around each line.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A bar of `len` steps shown until [`done`]; `template` in indicatif's syntax.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    show(bar)
}

/// A spinner with a message, ticking on its own.
pub fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    show(bar)
}

fn show(bar: ProgressBar) -> ProgressBar {
    if let Ok(mut shown) = SHOWN.lock()
        && let Some(old) = shown.replace(bar.clone())
    {
        old.finish_and_clear();
    }
    bar
}

/// Takes the bar off the screen.
pub fn done() {
    if let Ok(mut shown) = SHOWN.lock()
        && let Some(bar) = shown.take()
    {
        bar.finish_and_clear();
    }
}

/// Whether a bar is being drawn (standard error is a terminal and a bar is up).
pub fn visible() -> bool {
    SHOWN.lock().ok().and_then(|s| s.as_ref().map(|b| !b.is_hidden())).unwrap_or(false)
}

/// A line of narrative on standard output, above the bar when one is shown.
pub fn say(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let bar = SHOWN.lock().ok().and_then(|s| s.clone());
    let line = || emit(|out| writeln!(out, "{text}"));
    match bar {
        Some(bar) => bar.suspend(line),
        None => line(),
    }
}
