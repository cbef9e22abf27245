//! What happens when a run is cut short: SIGINT and SIGTERM remove this run's temporary files
//! and exit 130/143 with one line saying so; a SIGBUS from a memory-mapped input that shrank
//! under us (a download still in progress, a file truncated by another program) names the file,
//! removes the temporary files and exits 2. Both need the paths without allocating or locking,
//! so temporary files and mapped inputs are kept in fixed tables of atomics whose strings are
//! never freed (one per distinct path).

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

const TEMP_SLOTS: usize = 64;
const MAP_SLOTS: usize = 256;

static TEMPS: [AtomicPtr<libc::c_char>; TEMP_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; TEMP_SLOTS];

struct MapSlot {
    start: AtomicUsize,
    end: AtomicUsize,
    name: AtomicPtr<libc::c_char>,
}

static MAPS: [MapSlot; MAP_SLOTS] = [const {
    MapSlot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        name: AtomicPtr::new(std::ptr::null_mut()),
    }
}; MAP_SLOTS];

/// The path as a C string that is never freed, since a signal handler may read it at any time;
/// each distinct path is made once and kept in a table, so a process that opens the same files
/// again and again (a fuzzer, a library user) holds one copy each instead of one per open.
fn leaked(path: &Path) -> Option<*mut libc::c_char> {
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Mutex;
    // Addresses as usize: raw pointers are not Send, and these are only ever read.
    static NAMES: Mutex<Option<HashMap<Vec<u8>, usize>>> = Mutex::new(None);
    let bytes = path.as_os_str().as_bytes();
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(HashMap::new);
    if let Some(&p) = names.get(bytes) {
        return Some(p as *mut libc::c_char);
    }
    let p = CString::new(bytes).ok()?.into_raw();
    names.insert(bytes.to_vec(), p as usize);
    Some(p)
}

/// A temporary file removed if the run is interrupted; dropping the slot forgets it.
pub struct TempSlot(usize);

pub fn register_temp(path: &Path) -> Option<TempSlot> {
    let p = leaked(path)?;
    (0..TEMP_SLOTS).find_map(|i| {
        TEMPS[i]
            .compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| TempSlot(i))
    })
}

impl Drop for TempSlot {
    fn drop(&mut self) {
        TEMPS[self.0].store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// A memory-mapped input, named in the message if touching it faults.
pub struct Watched(usize);

pub fn watch_mapping(start: *const u8, len: usize, path: &Path) -> Option<Watched> {
    let name = leaked(path)?;
    let start = start as usize;
    for (i, slot) in MAPS.iter().enumerate() {
        if slot
            .start
            .compare_exchange(0, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.name.store(name, Ordering::SeqCst);
            slot.end.store(start.saturating_add(len), Ordering::SeqCst);
            slot.start.store(start, Ordering::SeqCst);
            return Some(Watched(i));
        }
    }
    None
}

impl Drop for Watched {
    fn drop(&mut self) {
        MAPS[self.0].end.store(0, Ordering::SeqCst);
        MAPS[self.0].start.store(0, Ordering::SeqCst);
    }
}

static COMMITTING: AtomicUsize = AtomicUsize::new(0);

/// While alive, SIGINT/SIGTERM wait: outputs are being moved under their names, and stopping
/// half-way would leave a mix of new and old files.
pub struct Committing;

impl Committing {
    pub fn start() -> Committing {
        COMMITTING.fetch_add(1, Ordering::SeqCst);
        Committing
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        COMMITTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes every registered temporary file; returns how many there were. Async-signal-safe:
/// atomics and unlink(2) only.
pub fn remove_temps() -> usize {
    let mut n = 0;
    for t in &TEMPS {
        let p = t.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: p is a NUL-terminated string leaked by register_temp and never freed.
            unsafe {
                libc::unlink(p);
            }
            n += 1;
        }
    }
    n
}

fn write_err(bytes: &[u8]) {
    // SAFETY: write(2) on stderr with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let mut name: *const libc::c_char = std::ptr::null();
    for slot in &MAPS {
        let start = slot.start.load(Ordering::SeqCst);
        if start != 0
            && start != usize::MAX
            && addr >= start
            && addr < slot.end.load(Ordering::SeqCst)
        {
            name = slot.name.load(Ordering::SeqCst);
            break;
        }
    }
    write_err(b"error: ");
    if name.is_null() {
        write_err(b"an input file");
    } else {
        // SAFETY: name is a NUL-terminated string leaked by watch_mapping and never freed.
        let len = unsafe { libc::strlen(name) };
        // SAFETY: name points to len readable bytes.
        write_err(unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) });
    }
    write_err(b": changed while being read (truncated or replaced by another program); no output was written\n");
    remove_temps();
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(2) };
}

/// Installs the handlers; call once, before any other thread starts (the SIGINT/SIGTERM mask is
/// inherited by the threads spawned after it).
pub fn install() {
    // SAFETY: libc calls on zero-initialized, then filled, sigaction and sigset_t values, made
    // before any other thread exists; the SIGBUS handler only does async-signal-safe work.
    let waiting = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());

        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let _ = std::thread::Builder::new()
        .name("quantfit-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waiting is an initialized signal set, blocked in every thread, so the
            // signals wait here instead of killing the process mid-write.
            if unsafe { libc::sigwait(&waiting, &mut sig) } != 0 {
                continue;
            }
            let n = remove_temps();
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!(
                "\nerror: interrupted by {name}; {}",
                match n {
                    0 => "nothing was left half-written".to_string(),
                    1 => "its partial output was removed".to_string(),
                    n => format!("its {n} partial outputs were removed"),
                }
            );
            std::process::exit(128 + sig);
        });
}

/// Whether a process exists (a temporary file's writer may still be running).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
