//! Every file quantfit writes goes through here, so that no careless path destroys what is not
//! ours:
//! - targets are checked before any work: never a directory, a FIFO, a socket, a block or
//!   character device (the null device excepted: `-o /dev/null` writes straight to it), a
//!   symbolic link only with `--force` (then the link is replaced, never its target), and never
//!   the same file (device and inode) as an input; several outputs may not name one file;
//! - data goes to a temporary file beside the target, created exclusively and without following
//!   links under a short unpredictable name (`.qf-HASH-PID-RANDOM.tmp`, so legal long names
//!   still fit), synced, then renamed over the target; a run that fails leaves no output and no
//!   temporary file, and commits its outputs only once all of them are written;
//! - leftovers of a killed run are recognized by name (the target's hash, a dead writer's pid,
//!   a regular file of this user) and removed by the next run that targets the same path;
//! - inputs are identified when opened and checked again before outputs are committed: a file
//!   that changed while being read is an error (`guard` turns a fault on a shrunk mapping into
//!   the same error).

pub mod guard;

use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

/// One input as it was when the run started.
#[derive(Clone, Debug)]
struct Input {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// The files a run reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs(Vec<Input>);

impl Inputs {
    /// Records the identity, size and time of each existing file (links followed).
    pub fn capture<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Inputs {
        let mut out = Vec::new();
        for p in paths {
            let p = p.as_ref();
            if let Ok(m) = std::fs::metadata(p) {
                if m.is_file() {
                    out.push(Input {
                        path: p.to_path_buf(),
                        dev: m.dev(),
                        ino: m.ino(),
                        len: m.len(),
                        modified: m.modified().ok(),
                    });
                }
            }
        }
        Inputs(out)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|i| i.path.as_path())
    }

    pub fn extend(&mut self, other: Inputs) {
        self.0.extend(other.0);
    }

    /// An input named by the same path (folder resolved, name as given): a link that is an
    /// input is still an input.
    fn same_path(&self, p: &Path) -> Option<&Path> {
        let want = resolved(p);
        self.0
            .iter()
            .find(|i| resolved(&i.path) == want)
            .map(|i| i.path.as_path())
    }

    fn same_file(&self, m: &Metadata) -> Option<&Path> {
        self.0
            .iter()
            .find(|i| i.dev == m.dev() && i.ino == m.ino())
            .map(|i| i.path.as_path())
    }

    /// Fails when an input was replaced, resized or modified since `capture`.
    pub fn verify(&self) -> Result<()> {
        for i in &self.0 {
            let now = std::fs::metadata(&i.path).ok();
            let same = now.as_ref().is_some_and(|m| {
                m.dev() == i.dev
                    && m.ino() == i.ino
                    && m.len() == i.len
                    && m.modified().ok() == i.modified
            });
            if !same {
                bail!(
                    "{}: changed while being read (its size, time or identity differs from when the run started); no output was written",
                    i.path.display()
                );
            }
        }
        Ok(())
    }
}

/// How a checked target is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A new file, or a regular file that is replaced.
    File,
    /// The null device: written to directly.
    Sink,
}

/// An output path that passed the checks.
#[derive(Clone, Debug)]
pub struct Target {
    path: PathBuf,
    kind: Kind,
}

impl Target {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The null device: what is written there cannot be read back.
    pub fn is_sink(&self) -> bool {
        matches!(self.kind, Kind::Sink)
    }
}

fn is_null_device(m: &Metadata) -> bool {
    m.file_type().is_char_device()
        && std::fs::metadata("/dev/null")
            .is_ok_and(|n| n.file_type().is_char_device() && n.rdev() == m.rdev())
}

/// File systems whose "files" are kernel interfaces: writing there changes the system.
fn kernel_file_system(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct for a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        0x9fa0 => Some("procfs"),
        0x6265_6572 => Some("sysfs"),
        0x2762_3f8b | 0x6367_7270 => Some("cgroup"),
        0x6462_6720 => Some("debugfs"),
        0x7363_6673 => Some("securityfs"),
        0x6265_6570 => Some("configfs"),
        _ => None,
    }
}

/// Checks that `path` may be written (see the module comment).
pub fn check(path: &Path, inputs: &Inputs, force: bool) -> Result<Target> {
    let shown = path.display();
    if path.file_name().is_none() || path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        bail!(
            "{shown}: not a file name (a folder path needs several types, or give the file's name)"
        );
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let real_parent = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    let meta = std::fs::symlink_metadata(path);
    let is_null = meta.as_ref().is_ok_and(is_null_device);
    if !is_null {
        if let Some(fs) = kernel_file_system(&real_parent) {
            bail!("{shown}: is on {fs}, where files are kernel settings; refusing to write there");
        }
        if ["/dev", "/proc", "/sys"]
            .iter()
            .any(|d| real_parent.starts_with(d))
        {
            bail!(
                "{shown}: is under {}; quantfit writes there only to /dev/null",
                real_parent.display()
            );
        }
    }
    if let Some(input) = inputs.same_path(path) {
        bail!(
            "{shown}: is the input {}; refusing to replace an input, link or not",
            input.display()
        );
    }
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target {
                path: path.to_path_buf(),
                kind: Kind::File,
            })
        }
        Err(e) => bail!("{shown}: cannot check the output path: {e}"),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        if let Ok(resolved) = std::fs::metadata(path) {
            if let Some(input) = inputs.same_file(&resolved) {
                bail!(
                    "{shown}: is a symbolic link to the input {}; refusing to write there, --force or not",
                    input.display()
                );
            }
        }
        if !force {
            bail!("{shown}: is a symbolic link; refusing to replace it (--force replaces the link itself, never the file it points to)");
        }
        return Ok(Target {
            path: path.to_path_buf(),
            kind: Kind::File,
        });
    }
    if ft.is_dir() {
        bail!("{shown}: is a directory; give a file name");
    }
    if is_null {
        return Ok(Target {
            path: path.to_path_buf(),
            kind: Kind::Sink,
        });
    }
    let what = if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_char_device() {
        Some("a character device")
    } else {
        None
    };
    if let Some(what) = what {
        bail!("{shown}: is {what}; quantfit writes regular files (or /dev/null) only");
    }
    if let Some(input) = inputs.same_file(&meta) {
        bail!(
            "{shown}: is the same file as the input {}; refusing to overwrite an input",
            input.display()
        );
    }
    Ok(Target {
        path: path.to_path_buf(),
        kind: Kind::File,
    })
}

/// The path as the file system resolves it: the parent folder canonicalized, the name as given.
fn resolved(path: &Path) -> PathBuf {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    dir.join(path.file_name().unwrap_or_default())
}

/// Checks every output of a run before any is written; two outputs naming one file are an
/// error (the second would silently replace the first).
pub fn check_all(paths: &[PathBuf], inputs: &Inputs, force: bool) -> Result<Vec<Target>> {
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            if resolved(a) == resolved(b) {
                bail!(
                    "{}: named by two outputs of this run; give each output its own name",
                    a.display()
                );
            }
        }
    }
    paths.iter().map(|p| check(p, inputs, force)).collect()
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Eight hex digits naming the target among the temporary files of its folder.
fn target_tag(target: &Path) -> String {
    use sha2::{Digest, Sha256};
    let name = target.file_name().unwrap_or_default();
    let digest = Sha256::digest(name.as_encoded_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes temporary files of `target` left by runs that no longer exist: the exact name
/// pattern, a regular file, owned by this user, its writer's pid gone.
fn remove_leftovers(target: &Path) {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(".qf-{}-", target_tag(target));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some((pid, rand)) = rest.split_once('-') else {
            continue;
        };
        let valid = pid.len() <= 10
            && pid.bytes().all(|b| b.is_ascii_digit())
            && rand.len() == 8
            && rand.bytes().all(|b| b.is_ascii_hexdigit());
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if valid
            && meta.file_type().is_file()
            && meta.uid() == uid
            && pid != std::process::id()
            && !guard::process_alive(pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            eprintln!(
                "note: removed {}, a partial output left by an interrupted run",
                e.path().display()
            );
        }
    }
}

/// O_CREAT|O_EXCL|O_NOFOLLOW: fails on anything already at `path`, a planted link included.
fn open_exclusive(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// Creates the temporary file for `target` exclusively, never following a link.
fn create_temp(target: &Path) -> Result<(PathBuf, File)> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tag = target_tag(target);
    for _ in 0..16 {
        let temp = dir.join(format!(
            ".qf-{tag}-{}-{:08x}.tmp",
            std::process::id(),
            random_u32()
        ));
        match open_exclusive(&temp) {
            Ok(f) => return Ok((temp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: cannot create output", target.display()))
            }
        }
    }
    bail!(
        "{}: cannot create a temporary file beside it",
        target.display()
    )
}

/// A file being written under a temporary name; dropping it unfinished deletes it.
pub struct AtomicFile {
    target: Target,
    temp: Option<PathBuf>,
    writer: Option<BufWriter<File>>,
    _slot: Option<guard::TempSlot>,
}

impl AtomicFile {
    pub fn create(target: &Target) -> Result<AtomicFile> {
        let (temp, file, slot) = match target.kind {
            Kind::Sink => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&target.path)
                    .with_context(|| format!("{}: cannot open", target.path.display()))?;
                (None, f, None)
            }
            Kind::File => {
                remove_leftovers(&target.path);
                let (temp, f) = create_temp(&target.path)?;
                // A replaced file keeps its permissions (a private file stays private).
                if let Ok(old) = std::fs::metadata(&target.path) {
                    if old.is_file() {
                        let _ = f.set_permissions(old.permissions());
                    }
                }
                let slot = guard::register_temp(&temp);
                (Some(temp), f, slot)
            }
        };
        Ok(AtomicFile {
            target: target.clone(),
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            _slot: slot,
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until finished")
    }

    /// Flushes and syncs the data; the file is complete but not yet under its name.
    pub fn finish(mut self) -> Result<Pending> {
        let writer = self.writer.take().expect("finish once");
        let shown = self.target.path.display().to_string();
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("{shown}: write failed"))?;
        if self.target.kind == Kind::File {
            file.sync_all()
                .with_context(|| format!("{shown}: write failed"))?;
        }
        Ok(Pending {
            target: self.target.clone(),
            temp: self.temp.take(),
            _slot: self._slot.take(),
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// A complete output waiting to be moved under its name; dropping it deletes it.
pub struct Pending {
    target: Target,
    temp: Option<PathBuf>,
    _slot: Option<guard::TempSlot>,
}

impl Pending {
    /// Where the complete data can be read before it is committed (the temporary file).
    pub fn written_path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.target.path)
    }

    pub fn commit(self) -> Result<()> {
        commit_all(vec![self])
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

fn sync_parent(target: &Path) {
    if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// A name beside `target` for keeping its old file while several outputs are committed; `.old`
/// (not `.tmp`), so that no later run ever mistakes it for a partial output.
fn backup_name(target: &Path) -> PathBuf {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!(
        ".qf-{}-{}-{:08x}.old",
        target_tag(target),
        std::process::id(),
        random_u32()
    ))
}

/// Moves complete outputs under their names, all of them or none: each target that exists is
/// first kept under a second name (a hard link to its file), then replaced by one atomic rename;
/// if a later rename fails, the outputs already moved are taken back out and the kept files put
/// back. Signals wait until this is over (`guard::Committing`), so an interrupted run never
/// leaves a mix of new and old files, and never loses an old one.
pub fn commit_all(pending: Vec<Pending>) -> Result<()> {
    let _committing = guard::Committing::start();
    let several = pending.len() > 1;
    // (target, kept old file, whether a file was there)
    let mut done: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let mut result = Ok(());
    let mut pending = pending;
    for p in pending.iter_mut() {
        let Some(temp) = p.temp.take() else {
            continue;
        };
        let target = p.target.path.clone();
        let existed = std::fs::symlink_metadata(&target).is_ok();
        let mut kept = None;
        if several && existed {
            let b = backup_name(&target);
            if std::fs::hard_link(&target, &b).is_ok() {
                kept = Some(b);
            }
        }
        if let Err(e) = std::fs::rename(&temp, &target) {
            let _ = std::fs::remove_file(&temp);
            if let Some(b) = &kept {
                let _ = std::fs::remove_file(b);
            }
            result = Err(e).with_context(|| {
                format!(
                    "{}: cannot move the finished output into place",
                    target.display()
                )
            });
            break;
        }
        done.push((target, kept));
    }
    if result.is_err() {
        for (target, kept) in done.iter().rev() {
            match kept {
                Some(b) => {
                    let _ = std::fs::rename(b, target);
                }
                None => {
                    let _ = std::fs::remove_file(target);
                }
            }
        }
        return result;
    }
    for (target, kept) in &done {
        if let Some(b) = kept {
            let _ = std::fs::remove_file(b);
        }
        sync_parent(target);
    }
    Ok(())
}

/// Writes `bytes` to a checked target atomically.
pub fn write_atomic(target: &Target, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(target)?;
    f.write_all(bytes)
        .with_context(|| format!("{}: write failed", target.path.display()))?;
    f.finish()?.commit()
}

/// A folder created for a run's outputs, removed again (if still empty) unless the run
/// succeeds and calls `keep`: a failed run leaves no empty folders behind.
pub struct CreatedDir {
    created: Vec<PathBuf>,
}

impl CreatedDir {
    /// Creates `dir` and any missing parents; remembers which it made.
    pub fn create(dir: &Path) -> Result<CreatedDir> {
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            missing.push(p.to_path_buf());
            d = p.parent();
        }
        if let Ok(m) = std::fs::metadata(dir) {
            if !m.is_dir() {
                bail!(
                    "{}: is not a folder (several outputs go into a folder)",
                    dir.display()
                );
            }
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
        Ok(CreatedDir { created: missing })
    }

    pub fn keep(mut self) {
        self.created.clear();
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        // Deepest first; remove_dir fails on a folder that is not empty, which is kept.
        for d in &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Checks a file that `append` will add to, before any work: as an output, and not a link.
pub fn check_log(path: &Path, inputs: &Inputs) -> Result<Target> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{}: is a symbolic link; give the file it points to",
            path.display()
        );
    }
    check(path, inputs, false)
}

/// The files of each input: a file itself, a folder's files (one level: a model folder).
pub fn files_of<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        match std::fs::read_dir(p) {
            Ok(entries) => out.extend(entries.flatten().map(|e| e.path()).filter(|f| f.is_file())),
            Err(_) => out.push(p.to_path_buf()),
        }
    }
    out
}

/// Appends `bytes` to a log-like file (the results file) in one write: the file is checked as
/// an output (no link, no input, no device but the null device), opened without following
/// links, and cut back to its old length if the write fails part-way, so no half line stays.
pub fn append(path: &Path, bytes: &[u8], inputs: &Inputs) -> Result<()> {
    let shown = path.display();
    let target = check_log(path, inputs)?;
    let mut file = std::fs::OpenOptions::new()
        .create(target.kind == Kind::File)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("{shown}: cannot open"))?;
    let before = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A file whose last line lacks its newline gets one first, so records never join.
    let mut last = [0u8; 1];
    let needs_newline = target.kind == Kind::File
        && before > 0
        && std::os::unix::fs::FileExt::read_at(&File::open(path)?, &mut last, before - 1)
            .is_ok_and(|n| n == 1)
        && last[0] != b'\n';
    let mut data = Vec::with_capacity(bytes.len() + 1);
    if needs_newline {
        data.push(b'\n');
    }
    data.extend_from_slice(bytes);
    let written = file.write_all(&data).and_then(|_| {
        if target.kind == Kind::File {
            file.sync_all()
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        if target.kind == Kind::File {
            let _ = file.set_len(before);
        }
        return Err(e).with_context(|| {
            format!("{shown}: cannot append (disk full?); the file is as it was")
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quantfit-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn nothing_under_final_name_until_commit() {
        let dir = scratch("atomic");
        let target = check(&dir.join("out.bin"), &Inputs::default(), false).unwrap();
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"half").unwrap();
            assert!(!target.path().exists());
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let pending = {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"whole").unwrap();
            f.finish().unwrap()
        };
        assert!(!target.path().exists(), "finished but not committed");
        drop(pending);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        write_atomic(&target, b"whole").unwrap();
        assert_eq!(std::fs::read(target.path()).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_stay_short_and_leftovers_of_dead_runs_go() {
        let dir = scratch("names");
        let long = "x".repeat(250) + ".gguf";
        let target = check(&dir.join(&long), &Inputs::default(), false).unwrap();
        write_atomic(&target, b"ok").unwrap();
        assert_eq!(std::fs::read(dir.join(&long)).unwrap(), b"ok");
        // A leftover of a writer that no longer exists, and one of a live run (this one).
        let tag = target_tag(&dir.join(&long));
        let dead = dir.join(format!(".qf-{tag}-4000000000-0badf00d.tmp"));
        let live = dir.join(format!(".qf-{tag}-{}-0badf00d.tmp", std::process::id()));
        let other = dir.join(".qf-00000000-4000000000-0badf00d.tmp");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"left").unwrap();
        }
        write_atomic(&target, b"again").unwrap();
        assert!(!dead.exists() && live.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_that_collide_or_hit_inputs_are_refused() {
        let dir = scratch("check");
        let input = dir.join("model.safetensors");
        std::fs::write(&input, b"weights").unwrap();
        let inputs = Inputs::capture([&input]);
        let err = check(&input, &inputs, false).unwrap_err().to_string();
        assert!(err.contains("is the input"), "{err}");
        let hard = dir.join("hard.bin");
        std::fs::hard_link(&input, &hard).unwrap();
        let err = check(&hard, &inputs, true).unwrap_err().to_string();
        assert!(err.contains("same file as the input"), "{err}");
        let err = check(&dir, &inputs, false).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let a = dir.join("a.gguf");
        let err = check_all(&[a.clone(), dir.join(".").join("a.gguf")], &inputs, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("named by two outputs"), "{err}");
        // A link: refused, and with --force the link is replaced, not what it points to.
        let link = dir.join("link.gguf");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(check(&link, &Inputs::default(), false).is_err());
        let t = check(&link, &Inputs::default(), true).unwrap();
        write_atomic(&t, b"new").unwrap();
        assert_eq!(std::fs::read(&input).unwrap(), b"weights");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(check(Path::new("/dev/null"), &inputs, false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_planted_at_a_temporary_name_is_never_followed() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = dir.join(".qf-00000000-1-00000000.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = open_exclusive(&planted).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rename failing after others succeeded puts every old file back.
    #[test]
    fn a_commit_that_fails_half_way_restores_the_old_files() {
        let dir = scratch("rollback");
        let names = ["a.bin", "b.bin", "c.bin"];
        for n in &names[..2] {
            std::fs::write(dir.join(n), b"OLD").unwrap();
        }
        let targets: Vec<Target> = names
            .iter()
            .map(|n| check(&dir.join(n), &Inputs::default(), false).unwrap())
            .collect();
        let pending: Vec<Pending> = targets
            .iter()
            .map(|t| {
                let mut f = AtomicFile::create(t).unwrap();
                f.write_all(b"NEW").unwrap();
                f.finish().unwrap()
            })
            .collect();
        // The third target turns into a folder with something in it before the commit.
        std::fs::create_dir(dir.join("c.bin")).unwrap();
        std::fs::write(dir.join("c.bin/inside"), b"x").unwrap();
        assert!(commit_all(pending).is_err());
        for n in &names[..2] {
            assert_eq!(std::fs::read(dir.join(n)).unwrap(), b"OLD", "{n}");
        }
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".qf-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_files_and_device_folders_are_refused() {
        assert!(check(Path::new("/proc/self/comm"), &Inputs::default(), true).is_err());
        assert!(check(Path::new("/sys/kernel/x"), &Inputs::default(), true).is_err());
        assert!(check(Path::new("/dev/stdout"), &Inputs::default(), true).is_err());
        assert!(check(Path::new("/dev/null"), &Inputs::default(), false).is_ok());
    }

    #[test]
    fn a_changed_input_is_noticed() {
        let dir = scratch("changed");
        let input = dir.join("in.bin");
        std::fs::write(&input, b"0123456789").unwrap();
        let inputs = Inputs::capture([&input]);
        inputs.verify().unwrap();
        std::fs::write(&input, b"01234").unwrap();
        let err = inputs.verify().unwrap_err().to_string();
        assert!(err.contains("changed while being read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn appends_are_whole_lines_or_nothing() {
        let dir = scratch("append");
        let log = dir.join("results.jsonl");
        append(&log, b"{\"a\":1}\n", &Inputs::default()).unwrap();
        append(&log, b"{\"b\":2}\n", &Inputs::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        let link = dir.join("link.jsonl");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert!(append(&link, b"x\n", &Inputs::default()).is_err());
        let inputs = Inputs::capture([&log]);
        assert!(append(&log, b"x\n", &inputs).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
