//! # conc-fuzz
//!
//! A small mutation fuzzer for conc that runs on stable Rust (cargo-fuzz needs nightly), with
//! three targets: `frame` (the frame splitter, the tokio codec and `Frame::decode`),
//! `handshake` (messages fed to client and server machines in every state) and `message`
//! (message bodies decoded into live processes with `bin::with_deserializer` and
//! `NodeSide::deliver`).
//!
//! ```text
//! cargo run --release -p conc-fuzz -- frame --seconds 60 --corpus fuzz/corpus/frame
//! cargo run --release -p conc-fuzz -- --write-seeds            # (re)writes fuzz/corpus/*/seed-*
//! cargo run --release -p conc-fuzz -- message --replay fuzz/artifacts/message/crash-…
//! ```
//!
//! Inputs are mutated from the corpus (bit flips, interesting bytes, inserts and deletes,
//! repeated chunks, bincode varint and big-endian length fields, splices of two entries); an
//! input whose outcome shows a new feature joins the in-memory corpus (`--save-new` also writes
//! it to the corpus directory). Each input runs on a thread with a 2 MiB stack, as on tokio's
//! worker threads.
//!
//! The fuzzer runs its loop in a child process and watches it: a panic, a crash of the process
//! (a stack overflow aborts it), an input that runs longer than `--timeout` or a resident size
//! over `--rss-limit-mb` saves the input under `fuzz/artifacts/<target>/` and makes the run
//! fail (exit status 1).

mod mutate;
mod targets;

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::mutate::{Rng, mutate};

/// A mutation fuzzer for conc's frame decoder, handshake and message decoding.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// The target: frame, handshake or message.
    #[arg(value_parser = targets::NAMES)]
    target: Option<String>,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The corpus directory (read at start; also written with --save-new). Default:
    /// `fuzz/corpus/<target>`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where crashing inputs go. Default: `fuzz/artifacts/<target>`.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// The random seed (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest time one input may run, in seconds, before it counts as a hang.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Largest resident size of the fuzzing process, in MiB.
    #[arg(long, default_value_t = 2048)]
    rss_limit_mb: u64,
    /// Largest input, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    max_len: usize,
    /// Write inputs that showed new features to the corpus directory.
    #[arg(long)]
    save_new: bool,
    /// Write the seed corpus of every target (`fuzz/corpus/<target>/seed-*`) and exit.
    #[arg(long)]
    write_seeds: bool,
    /// Run these inputs once each (no fuzzing) and exit: reproduces a crash.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Run the loop in this process (the supervisor starts the loop with it).
    #[arg(long, hide = true)]
    worker: Option<PathBuf>,
}

/// The fuzz directory of the workspace (this crate's directory).
fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.write_seeds {
        return write_seeds(args.corpus.as_deref());
    }
    let Some(target) = args.target.clone() else {
        eprintln!(
            "error: name a target ({}) or pass --write-seeds",
            targets::NAMES.join(", ")
        );
        return ExitCode::from(2);
    };
    if !args.replay.is_empty() {
        return replay(&target, &args.replay);
    }
    match &args.worker {
        Some(current) => worker(&target, &args, current),
        None => supervise(&target, &args),
    }
}

fn write_seeds(root: Option<&Path>) -> ExitCode {
    let root = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| fuzz_dir().join("corpus"));
    for name in targets::NAMES {
        let dir = root.join(name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        let target = run_on_big_stack(move || {
            targets::by_name(name)
                .map(|t| t.seeds())
                .unwrap_or_default()
        });
        for (seed_name, bytes) in target {
            let path = dir.join(format!("seed-{seed_name}"));
            if let Err(e) = std::fs::write(&path, &bytes) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!("wrote the seeds of {name} to {}", dir.display());
    }
    ExitCode::SUCCESS
}

/// The stack size of the thread inputs run on: tokio's worker threads have 2 MiB.
const STACK: usize = 2 << 20;

/// Runs `f` on a thread with a [`STACK`] stack.
fn run_on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn the fuzzing thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn replay(target: &str, files: &[PathBuf]) -> ExitCode {
    let target = target.to_string();
    let files = files.to_vec();
    run_on_big_stack(move || {
        let mut t = targets::by_name(&target).expect("a known target");
        for file in &files {
            let input = match std::fs::read(file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            let started = Instant::now();
            let mut features = Vec::new();
            t.run(&input, &mut features);
            println!(
                "{}: ok in {:?} ({} bytes)",
                file.display(),
                started.elapsed(),
                input.len()
            );
        }
        ExitCode::SUCCESS
    })
}

/// Runs the fuzzing loop in a child process and turns its death into a saved artifact.
fn supervise(target: &str, args: &Args) -> ExitCode {
    let artifacts = artifacts_dir(target, args);
    let _ = std::fs::create_dir_all(&artifacts);
    let current =
        std::env::temp_dir().join(format!("conc-fuzz-{target}-{}.current", std::process::id()));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg(target)
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--timeout", &args.timeout.to_string()])
        .args(["--rss-limit-mb", &args.rss_limit_mb.to_string()])
        .args(["--max-len", &args.max_len.to_string()])
        .arg("--corpus")
        .arg(corpus_dir(target, args))
        .arg("--artifacts")
        .arg(&artifacts)
        .arg("--worker")
        .arg(&current);
    if let Some(seed) = args.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    if args.save_new {
        cmd.arg("--save-new");
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the fuzzing process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = status.code();
    let result = match code {
        Some(0) => ExitCode::SUCCESS,
        // The worker found and saved a panic, a hang or excess memory.
        Some(1) => ExitCode::FAILURE,
        _ => {
            // The worker died (a stack overflow aborts the process, so do some allocation
            // failures): the input it was running is in the current-input file.
            eprintln!("the fuzzing process died: {status}");
            match read_current(&current) {
                Some(input) => {
                    let path = save(&artifacts, "crash", &input);
                    eprintln!(
                        "CRASH: the input that killed it ({} bytes) is in {}",
                        input.len(),
                        path.display()
                    );
                }
                None => eprintln!("the input that killed it could not be recovered"),
            }
            ExitCode::FAILURE
        }
    };
    let _ = std::fs::remove_file(&current);
    result
}

fn corpus_dir(target: &str, args: &Args) -> PathBuf {
    args.corpus
        .clone()
        .unwrap_or_else(|| fuzz_dir().join("corpus").join(target))
}

fn artifacts_dir(target: &str, args: &Args) -> PathBuf {
    args.artifacts
        .clone()
        .unwrap_or_else(|| fuzz_dir().join("artifacts").join(target))
}

/// The input last written to the current-input file: a 4-byte length, then the bytes.
fn read_current(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    bytes.get(4..4 + len).map(<[u8]>::to_vec)
}

fn hash_of(input: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    h.finish()
}

/// Saves an input as `<dir>/<kind>-<hash>`; returns the path.
fn save(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{kind}-{:016x}", hash_of(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// The resident set size of this process in MiB.
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// What the watchdog sees of the loop.
struct Shared {
    /// Milliseconds since the start when the current input began, or 0 between inputs.
    started_ms: AtomicU64,
    /// The current input.
    input: Mutex<Vec<u8>>,
}

fn worker(target: &str, args: &Args, current: &Path) -> ExitCode {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(current)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", current.display());
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        started_ms: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
    });
    let epoch = Instant::now();
    let artifacts = artifacts_dir(target, args);
    spawn_watchdog(
        shared.clone(),
        epoch,
        Duration::from_secs(args.timeout.max(1)),
        args.rss_limit_mb,
        artifacts.clone(),
    );
    let target = target.to_string();
    let args = args.clone();
    run_on_big_stack(move || fuzz_loop(&target, &args, &file, &shared, epoch, &artifacts))
}

/// Watches the loop from another thread: an input running too long, or the process growing
/// over the memory limit, is saved and ends the process with status 1.
fn spawn_watchdog(
    shared: Arc<Shared>,
    epoch: Instant,
    timeout: Duration,
    rss_limit_mb: u64,
    artifacts: PathBuf,
) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let started = shared.started_ms.load(Ordering::Acquire);
            let now = epoch.elapsed().as_millis() as u64;
            let hung = started != 0 && now.saturating_sub(started) > timeout.as_millis() as u64;
            let rss = rss_mb();
            if hung || rss > rss_limit_mb {
                let input = shared
                    .input
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let (kind, why) = if hung {
                    ("timeout", format!("an input ran for more than {timeout:?}"))
                } else {
                    ("oom", format!("the process grew to {rss} MiB"))
                };
                let path = save(&artifacts, kind, &input);
                eprintln!(
                    "{}: {why}; the input ({} bytes) is in {}",
                    kind.to_uppercase(),
                    input.len(),
                    path.display()
                );
                let _ = std::io::stderr().flush();
                std::process::exit(1);
            }
        }
    });
}

fn fuzz_loop(
    target_name: &str,
    args: &Args,
    current: &std::fs::File,
    shared: &Shared,
    epoch: Instant,
    artifacts: &Path,
) -> ExitCode {
    let mut target = targets::by_name(target_name).expect("a known target");
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng::new(seed);
    let corpus_path = corpus_dir(target_name, args);
    let mut corpus: Vec<Vec<u8>> = target.seeds().into_iter().map(|(_, b)| b).collect();
    if let Ok(entries) = std::fs::read_dir(&corpus_path) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                corpus.push(bytes);
            }
        }
    }
    let mut seen: HashSet<u64> = HashSet::new();
    let mut features = Vec::new();
    let mut runs: u64 = 0;
    let mut crashed = false;
    let mut run_one = |input: &[u8], features: &mut Vec<u64>, runs: &mut u64| -> bool {
        // The supervisor reads this if the process dies.
        let mut record = Vec::with_capacity(input.len() + 4);
        record.extend_from_slice(&(input.len() as u32).to_le_bytes());
        record.extend_from_slice(input);
        let _ = current.write_at(&record, 0);
        {
            let mut cur = shared.input.lock().unwrap_or_else(|p| p.into_inner());
            cur.clear();
            cur.extend_from_slice(input);
        }
        shared.started_ms.store(
            (epoch.elapsed().as_millis() as u64).max(1),
            Ordering::Release,
        );
        features.clear();
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(input, features)));
        shared.started_ms.store(0, Ordering::Release);
        *runs += 1;
        if res.is_err() {
            let path = save(artifacts, "crash", input);
            eprintln!(
                "CRASH: the input ({} bytes) panicked; it is in {}",
                input.len(),
                path.display()
            );
            return false;
        }
        true
    };
    // The corpus first.
    for input in corpus.clone() {
        if !run_one(&input, &mut features, &mut runs) {
            return ExitCode::FAILURE;
        }
        seen.extend(features.iter().copied());
    }
    let initial = corpus.len();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let max_corpus = 20_000;
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut input, &corpus, &mut rng, args.max_len);
        if !run_one(&input, &mut features, &mut runs) {
            crashed = true;
            break;
        }
        let new = features.iter().filter(|f| !seen.contains(f)).count();
        if new > 0 {
            seen.extend(features.iter().copied());
            if corpus.len() < max_corpus {
                if args.save_new {
                    save(&corpus_path, "new", &input);
                }
                corpus.push(input);
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "{target_name}: {runs} runs, {:.0}/s, corpus {}, features {}",
                runs as f64 / started.elapsed().as_secs_f64(),
                corpus.len(),
                seen.len()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{target_name}: seed {seed}: {runs} runs in {secs:.0} s ({:.0}/s); corpus {initial} -> {}, \
         features {}{}",
        runs as f64 / secs.max(1e-9),
        corpus.len(),
        seen.len(),
        if crashed { "; CRASH" } else { "; no crash" }
    );
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
