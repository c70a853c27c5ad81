//! Timing and showing the build's steps: a spinner on a terminal, plain lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub name: String,
    pub ms: u64,
    /// The step's result came from the cache.
    pub cached: bool,
}

pub struct Steps {
    pub times: Vec<StepTime>,
    interactive: bool,
    quiet: bool,
}

impl Steps {
    pub fn new(interactive: bool, quiet: bool) -> Steps {
        Steps { times: Vec::new(), interactive, quiet }
    }

    /// Runs `f` as step `name`. `f` returns whether its result came from the cache.
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<(T, bool)>) -> anyhow::Result<T> {
        let start = Instant::now();
        let spinner = (self.interactive && !self.quiet).then(|| {
            let pb = ProgressBar::new_spinner();
            pb.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
            pb.set_message(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        let result = f();
        if let Some(pb) = spinner {
            pb.finish_and_clear();
        }
        let (value, cached) = result.map_err(|e| e.context(format!("step {name}")))?;
        let ms = start.elapsed().as_millis() as u64;
        if !self.quiet {
            eprintln!(
                "cairn build: {name:<22} {:>7.2} s{}",
                ms as f64 / 1000.0,
                if cached { "  (cached)" } else { "" }
            );
        }
        self.times.push(StepTime { name: name.to_string(), ms, cached });
        Ok(value)
    }
}
