//! The XDP program that steers an interface's frames into roamgate's AF_XDP sockets, loaded
//! by roamgate itself through bpf(2): no libbpf, no object file, no external tool at run time.
//!
//! The program is five instructions: look up the frame's rx queue in an XSKMAP and redirect
//! to the socket bound there, or pass the frame to the kernel when that queue has no socket
//! (`bpf_redirect_map` with `XDP_PASS` as its fallback action). It is attached with a BPF link
//! (`BPF_LINK_CREATE`), so it belongs to this process: when the process exits, however it
//! exits, the kernel closes the link and the interface is back to normal. Nothing is pinned.
//!
//! This module and the AF_XDP port are the data plane's FFI boundary with the kernel; every
//! `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode if the driver has it, else generic (SKB) mode.
    Auto,
    /// Native mode only: needed for zero-copy.
    Native,
    /// Generic mode: works on every interface; frames are copied.
    Skb,
}

// bpf(2) commands, map and program types (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Offset of `rx_queue_index` in `struct xdp_md` (data, data_end, data_meta, ingress_ifindex).
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The redirect program, with the XSKMAP's fd patched into its `ld_imm64`.
fn program(map_fd: RawFd) -> [Insn; 6] {
    [
        // r2 = ctx->rx_queue_index            (BPF_LDX | BPF_MEM | BPF_W)
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = &xsks_map (two-slot ld_imm64)  (BPF_LD | BPF_DW | BPF_IMM)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the queue has no socket (BPF_ALU64 | BPF_MOV | BPF_K)
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)   (BPF_JMP | BPF_CALL)
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // return r0                           (BPF_JMP | BPF_EXIT)
        insn(0x95, 0, 0, 0, 0),
    ]
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    // The kernel reads the whole union; the rest of link_create stays zero.
    _rest: [u64; 4],
}

/// Calls bpf(2) with `attr`; returns the non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // and the size passed is exactly its size; the kernel reads (and for some commands writes)
    // only within that size. Any pointers inside it point to buffers the caller keeps alive.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            core::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful bpf(2) call that creates a new file
    // descriptor; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, b) in n.iter_mut().zip(s.bytes().take(15)) {
        *d = b;
    }
    n
}

/// The program attached to one interface, with its socket map. Dropping it detaches the
/// program.
pub struct XdpProgram {
    ifname: String,
    ifindex: u32,
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    native: bool,
}

impl XdpProgram {
    /// Loads the redirect program and attaches it to `ifname`, with room for `queues` sockets.
    pub fn attach(ifname: &str, mode: XdpMode, queues: u32) -> io::Result<Self> {
        let ifindex = ifindex(ifname)?;
        let mut mattr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: queues.max(1),
            map_name: name16("roamgate_xsks"),
            ..Default::default()
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut mattr).map_err(|e| ctx(e, "creating XSKMAP"))?);

        let insns = program(map.as_raw_fd());
        let license = c"Apache-2.0";
        let mut log = vec![0u8; 4096];
        let mut pattr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name16("roamgate_xsk"),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        let prog = match bpf(BPF_PROG_LOAD, &mut pattr) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let msg = String::from_utf8_lossy(log.get(..end).unwrap_or_default());
                return Err(io::Error::new(
                    e.kind(),
                    format!("loading the XDP program: {e}; verifier: {}", msg.trim()),
                ));
            }
        };

        let try_link = |flags: u32| {
            let mut lattr = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags,
                ..Default::default()
            };
            bpf(BPF_LINK_CREATE, &mut lattr).map(owned)
        };
        let (link, native) = match mode {
            XdpMode::Native => (
                try_link(XDP_FLAGS_DRV_MODE).map_err(|e| attach_err(e, ifname, "native"))?,
                true,
            ),
            XdpMode::Skb => (
                try_link(XDP_FLAGS_SKB_MODE).map_err(|e| attach_err(e, ifname, "skb"))?,
                false,
            ),
            XdpMode::Auto => match try_link(XDP_FLAGS_DRV_MODE) {
                Ok(l) => (l, true),
                Err(_) => (
                    try_link(XDP_FLAGS_SKB_MODE).map_err(|e| attach_err(e, ifname, "skb"))?,
                    false,
                ),
            },
        };
        Ok(XdpProgram {
            ifname: ifname.to_string(),
            ifindex,
            map,
            _prog: prog,
            _link: link,
            native,
        })
    }

    /// Steers frames of rx queue `queue` to the AF_XDP socket `xsk_fd` (which must be bound).
    pub fn register(&self, queue: u32, xsk_fd: RawFd) -> io::Result<()> {
        let key = queue;
        let value = xsk_fd as u32;
        let mut a = MapElemAttr {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut a)
            .map(|_| ())
            .map_err(|e| ctx(e, "registering the AF_XDP socket"))
    }

    /// Stops steering queue `queue` (its frames go to the kernel again).
    pub fn unregister(&self, queue: u32) {
        let key = queue;
        let mut a = MapElemAttr {
            map_fd: self.map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            ..Default::default()
        };
        // A missing entry is already the state we want.
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut a);
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// True when attached in native (driver) mode, false in generic (SKB) mode.
    pub fn is_native(&self) -> bool {
        self.native
    }
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn attach_err(e: io::Error, ifname: &str, mode: &str) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("attaching the XDP program to {ifname} in {mode} mode: {e}"),
    )
}

/// The interface index of `ifname`.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {ifname:?}"),
        ))
    } else {
        Ok(idx)
    }
}

/// The MAC address of `ifname`, from sysfs.
pub fn mac_address(ifname: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    parse_mac(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{ifname}: unreadable MAC {s:?}"),
        )
    })
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encodes_the_map_fd_and_fallback() {
        let p = program(7);
        assert_eq!(p[1].imm, 7);
        assert_eq!(p[1].regs, 0x11, "dst r1, src BPF_PSEUDO_MAP_FD");
        assert_eq!(p[3].imm, XDP_PASS);
        assert_eq!(p[5].code, 0x95);
        assert_eq!(core::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:0a:0b:ff"),
            Some([2, 0, 0, 0x0a, 0x0b, 0xff])
        );
        assert_eq!(parse_mac("02:00:00:0a:0b"), None);
        assert_eq!(parse_mac("02:00:00:0a:0b:ff:01"), None);
        assert_eq!(parse_mac("zz:00:00:0a:0b:ff"), None);
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let e = ifindex("no-such-if0").unwrap_err();
        assert!(e.to_string().contains("no-such-if0"));
    }
}
