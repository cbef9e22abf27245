//! Never destroy what is not ours: links at the output name, device nodes and FIFOs, outputs
//! that are inputs, aliases naming one file twice, signals mid-run, inputs truncated or changed
//! while being read, a full disk, leftovers of killed runs, long names. Each case shows the
//! other file untouched and nothing left behind.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantfit"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-out/output-safety")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Exit 2 with exactly one `error:` line containing `want`.
fn refused(out: &Output, want: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(want), "wanted {want:?} in {err}");
    err
}

/// Names in `dir` (hidden ones too); none when it does not exist.
fn listing(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn no_temp_files(dir: &Path) {
    let left: Vec<String> = listing(dir)
        .into_iter()
        .filter(|n| n.starts_with(".qf-"))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

/// A tiny model folder (fast to convert).
fn tiny(name: &str) -> PathBuf {
    let dir = scratch(name).join("model");
    std::fs::create_dir_all(&dir).unwrap();
    common::write_tiny_llama(&dir, 1)
}

/// A raw f32 matrix of `rows` x `cols`.
fn matrix(dir: &Path, rows: usize, cols: usize) -> PathBuf {
    let p = dir.join("m.f32");
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|i| ((i as f32 * 0.37).sin() * 0.02).to_le_bytes())
        .collect();
    std::fs::write(&p, data).unwrap();
    p
}

/// A model big enough that converting it takes seconds on 2 cores (signals arrive mid-run).
fn slow_model() -> PathBuf {
    use std::sync::OnceLock;
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-data/slow-llama");
        if !dir.join("model.safetensors").exists() {
            let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            let spec = quantfit::source::synthetic::LlamaSpec {
                n_layer: 6,
                hidden: 768,
                ff: 3072,
                n_head: 12,
                n_head_kv: 4,
                vocab: 49152,
                seed: 7,
            };
            quantfit::source::synthetic::write_llama(
                &tmp,
                &spec,
                &common::shared_dir().join("models/smollm2-135m"),
            )
            .unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        dir
    })
    .clone()
}

/// Starts a slow conversion into `out` (four outputs) and waits until all four temporary
/// files exist.
fn start_slow_conversion(model: &Path, out: &Path) -> std::process::Child {
    let child = bin()
        .args([
            "quantize",
            model.to_str().unwrap(),
            "-t",
            "IQ4_XS,IQ4_NL,Q4_K_M,Q5_K_M",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while listing(out)
        .iter()
        .filter(|n| n.starts_with(".qf-"))
        .count()
        < 4
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn links_at_the_output_name_are_refused_unless_forced_and_never_followed() {
    let dir = scratch("links");
    let m = matrix(&dir, 4, 64);
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let link = dir.join("out.bin");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        link.to_str().unwrap(),
    ]);
    refused(&out, "symbolic link");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // --force replaces the link itself; the file it pointed to stays as it was.
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        link.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(std::fs::metadata(&link).unwrap().len(), 4 * 68);
    // A link planted where the old scheme put its temporary file changes nothing.
    let planted = dir.join(format!(".out2.bin.partial-{}", 1));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        dir.join("out2.bin").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    no_temp_files(&dir);
}

#[test]
fn fifos_and_device_nodes_are_not_replaced() {
    let dir = scratch("devices");
    let m = matrix(&dir, 4, 64);
    let fifo = dir.join("pipe");
    assert_eq!(
        unsafe {
            libc::mkfifo(
                std::ffi::CString::new(fifo.to_str().unwrap())
                    .unwrap()
                    .as_ptr(),
                0o644,
            )
        },
        0
    );
    let start = Instant::now();
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        fifo.to_str().unwrap(),
    ]);
    refused(&out, "FIFO");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "no hang on a FIFO"
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // The null device is a sink: written to directly, never replaced.
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        "/dev/null",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    // Another character device (a /dev/full replica) is refused; making one needs root.
    let node = dir.join("full");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path; (1, 7) is /dev/full's device number.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 7)) } == 0 {
        let out = run(&[
            "quantize-raw",
            m.to_str().unwrap(),
            "--cols",
            "64",
            "-t",
            "Q8_0",
            "-o",
            node.to_str().unwrap(),
        ]);
        refused(&out, "character device");
        assert!(std::fs::symlink_metadata(&node)
            .unwrap()
            .file_type()
            .is_char_device());
    } else {
        eprintln!("skipped: the /dev/full replica needs root (mknod failed); the FIFO and /dev/null cases ran");
    }
    no_temp_files(&dir);
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let model = tiny("same-file");
    let weights = model.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let out = run(&[
        "quantize",
        model.to_str().unwrap(),
        "-t",
        "Q8_0",
        "-o",
        weights.to_str().unwrap(),
    ]);
    refused(&out, "input");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let cfg = model.join("config.json");
    let out = run(&[
        "quantize",
        model.to_str().unwrap(),
        "-t",
        "Q8_0",
        "-o",
        cfg.to_str().unwrap(),
    ]);
    refused(&out, "input");

    let dir = model.parent().unwrap().to_path_buf();
    let m = matrix(&dir, 4, 64);
    let raw = std::fs::read(&m).unwrap();
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        m.to_str().unwrap(),
    ]);
    refused(&out, "input");
    assert_eq!(std::fs::read(&m).unwrap(), raw);

    // eval: the results file may not be a model or the text; checked before anything runs.
    let gguf = dir.join("tiny.gguf");
    assert!(run(&[
        "quantize",
        model.to_str().unwrap(),
        "-t",
        "Q8_0",
        "-o",
        gguf.to_str().unwrap()
    ])
    .status
    .success());
    let g = std::fs::read(&gguf).unwrap();
    let out = run(&[
        "eval",
        gguf.to_str().unwrap(),
        "--results",
        gguf.to_str().unwrap(),
    ]);
    refused(&out, "input");
    assert_eq!(std::fs::read(&gguf).unwrap(), g);
    let text = dir.join("text.txt");
    std::fs::write(&text, "some text ".repeat(200)).unwrap();
    let out = run(&[
        "eval",
        gguf.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--results",
        text.to_str().unwrap(),
    ]);
    refused(&out, "input");
    no_temp_files(&dir);
    no_temp_files(&model);
}

#[test]
fn two_names_for_one_output_are_refused_before_any_work() {
    let model = tiny("aliases");
    let out_dir = model.parent().unwrap().join("out");
    for types in ["Q8_0,q8_0", "Q4_K,Q4_K_M"] {
        let out = run(&[
            "quantize",
            model.to_str().unwrap(),
            "-t",
            types,
            "-o",
            out_dir.to_str().unwrap(),
        ]);
        refused(&out, "same file type");
        assert!(
            !out_dir.exists() || listing(&out_dir).is_empty(),
            "{types}: {:?}",
            listing(&out_dir)
        );
    }
    let dir = model.parent().unwrap().to_path_buf();
    let m = matrix(&dir, 4, 64);
    let raw_out = dir.join("raw");
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0,q8_0",
        "-o",
        raw_out.to_str().unwrap(),
    ]);
    refused(&out, "named by two outputs");
    assert!(!raw_out.exists(), "no folder left behind");
}

#[test]
fn a_run_that_fails_part_way_commits_nothing() {
    let dir = scratch("partial");
    // 64 columns: the 32-element formats work, the 256-element k-quants cannot.
    let m = matrix(&dir, 4, 64);
    let out_dir = dir.join("all");
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q4_0,Q8_0,Q4_K",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
}

#[test]
fn long_legal_names_fit() {
    let dir = scratch("long");
    let m = matrix(&dir, 4, 64);
    let name = "n".repeat(250);
    let target = dir.join(&name);
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 4 * 68);
    no_temp_files(&dir);
}

#[test]
fn sigterm_and_sigint_remove_partial_outputs() {
    let model = slow_model();
    for (sig, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let out = scratch(&format!("signal-{name}"));
        let child = start_slow_conversion(&model, &out);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(code), "{err}");
        assert!(
            err.contains(&format!("interrupted by {name}")) && err.contains("removed"),
            "{err}"
        );
        assert!(listing(&out).is_empty(), "{name}: {:?}", listing(&out));
    }
}

#[test]
fn leftovers_of_a_killed_run_are_removed_by_the_next() {
    let model = slow_model();
    let out = scratch("sigkill");
    let mut child = start_slow_conversion(&model, &out);
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<String> = listing(&out)
        .into_iter()
        .filter(|n| n.starts_with(".qf-"))
        .collect();
    assert_eq!(
        left.len(),
        4,
        "one temporary file per output, recognizable by name: {left:?}"
    );
    let stranger = out.join("unrelated.tmp");
    std::fs::write(&stranger, b"mine").unwrap();
    let done = bin()
        .args([
            "quantize",
            model.to_str().unwrap(),
            "-t",
            "Q8_0,IQ4_XS,IQ4_NL,Q4_K_M,Q5_K_M",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    assert!(err.contains("left by an interrupted run"), "{err}");
    no_temp_files(&out);
    assert_eq!(std::fs::read(&stranger).unwrap(), b"mine");
}

#[test]
fn an_input_truncated_or_changed_during_a_run_is_an_error_with_no_output() {
    let src = slow_model();
    let model = scratch("truncated").join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(src.join(f), model.join(f)).unwrap();
    }
    let out = model.parent().unwrap().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = start_slow_conversion(&model, &out);
    let weights = std::fs::OpenOptions::new()
        .write(true)
        .open(model.join("model.safetensors"))
        .unwrap();
    let len = weights.metadata().unwrap().len();
    weights.set_len(len / 3).unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("changed while being read"),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // Rewritten in place with the same size: noticed before the outputs take their names.
    std::fs::copy(
        src.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let child = start_slow_conversion(&model, &out);
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(model.join("config.json"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.json") && err.contains("changed while being read"),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

/// A file-size limit makes every write past it fail as a full disk does (EFBIG instead of
/// ENOSPC), without root; SIGXFSZ is ignored so the write returns the error.
fn with_disk_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: setrlimit and signal are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn a_full_disk_leaves_no_file_under_any_final_name() {
    let dir = scratch("full-disk");
    let charts = dir.join("charts");
    let out = with_disk_limit(
        bin().args(["plan", "--chart", charts.to_str().unwrap()]),
        30_000,
    )
    .output()
    .unwrap();
    refused(&out, "write failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Error {") && !err.contains("Os {"),
        "no debug dump: {err}"
    );
    assert!(
        !charts.exists(),
        "the chart folder the run made is gone: {:?}",
        listing(&charts)
    );

    let model = tiny("full-disk-model");
    let gguf_dir = dir.join("gguf");
    std::fs::create_dir_all(&gguf_dir).unwrap();
    let out = with_disk_limit(
        bin().args([
            "quantize",
            model.to_str().unwrap(),
            "-t",
            "Q8_0,F16",
            "-o",
            gguf_dir.to_str().unwrap(),
        ]),
        2_000_000,
    )
    .output()
    .unwrap();
    refused(&out, "write failed");
    assert!(listing(&gguf_dir).is_empty(), "{:?}", listing(&gguf_dir));

    // The results file keeps whole lines: a failed append leaves it as it was.
    let results = dir.join("results.jsonl");
    std::fs::write(&results, "{\"kind\":\"eval\"}\n").unwrap();
    let gguf = dir.join("tiny.gguf");
    assert!(run(&[
        "quantize",
        model.to_str().unwrap(),
        "-t",
        "Q8_0",
        "-o",
        gguf.to_str().unwrap()
    ])
    .status
    .success());
    let out = with_disk_limit(
        bin().args([
            "bench",
            gguf.to_str().unwrap(),
            "--pp",
            "8",
            "--tg",
            "4",
            "--reps",
            "1",
            "--results",
            results.to_str().unwrap(),
        ]),
        20,
    )
    .output()
    .unwrap();
    refused(&out, "cannot append");
    assert_eq!(
        std::fs::read_to_string(&results).unwrap(),
        "{\"kind\":\"eval\"}\n"
    );
}

/// Found by a hostile review: a linked input replaced under --force, a full standard output,
/// a newline in a file name, an output folder left behind by a failed run.
#[test]
fn forced_links_to_inputs_full_stdout_odd_names_and_empty_folders() {
    let real = tiny("linked-input");
    let linked = real.parent().unwrap().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    for e in std::fs::read_dir(&real).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), linked.join(e.file_name())).unwrap();
    }
    let weights = linked.join("model.safetensors");
    let out = run(&[
        "quantize",
        linked.to_str().unwrap(),
        "-t",
        "Q8_0",
        "-o",
        weights.to_str().unwrap(),
        "--force",
    ]);
    refused(&out, "input");
    assert!(std::fs::symlink_metadata(&weights)
        .unwrap()
        .file_type()
        .is_symlink());

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = bin().arg("types").stdout(full).output().unwrap();
    refused(&out, "cannot write to standard output");

    let dir = scratch("odd-names");
    let m = matrix(&dir, 4, 64);
    let odd = dir.join("no\nsuch/dir/out.bin");
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        odd.to_str().unwrap(),
    ]);
    refused(&out, "\\n");

    let fresh = dir.join("fresh/deeper");
    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0,q8_0",
        "-o",
        fresh.to_str().unwrap(),
    ]);
    refused(&out, "named by two outputs");
    assert!(
        !dir.join("fresh").exists(),
        "the folders this run made are gone"
    );

    let out = run(&[
        "quantize-raw",
        m.to_str().unwrap(),
        "--cols",
        "64",
        "-t",
        "Q8_0",
        "-o",
        "/proc/self/comm",
    ]);
    refused(&out, "procfs");
}
