//! The two raw socket calls the probers share: `socket(2)` into an owned descriptor, and
//! `setsockopt(2)` of a plain value.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `socket(domain, kind | SOCK_CLOEXEC, protocol)`, in the calling thread's network namespace.
///
/// # Errors
/// When the kernel refuses the socket.
pub fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); checked below.
    let raw = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `setsockopt(fd, level, name, &value, size_of::<T>())` for an option whose value is a plain `T`
/// (an int, a bit mask).
///
/// # Errors
/// When the kernel refuses the option.
pub fn set_option<T: Copy>(fd: &OwnedFd, level: i32, name: i32, value: T) -> io::Result<()> {
    let len = u32::try_from(size_of::<T>()).map_err(|_| io::Error::other("option too large"))?;
    // SAFETY: `value` lives on the stack for the call and is `len` bytes long.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
