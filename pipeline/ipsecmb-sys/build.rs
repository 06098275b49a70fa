//! Generates minimal bindings to intel-ipsec-mb (`intel-ipsec-mb.h`) for AES-GCM and links
//! `libIPSec_MB`.
//!
//! Environment overrides:
//! - `IPSECMB_INCLUDE_DIR`: directory holding `intel-ipsec-mb.h` (default `/usr/include`).
//! - `IPSECMB_LIB_DIR`: directory holding `libIPSec_MB.{so,a}` (default: the linker's search path).
//! - `IPSECMB_STATIC=1`: link the static library.

use std::env;
use std::path::PathBuf;

const HEADER: &str = "intel-ipsec-mb.h";

fn main() {
    println!("cargo:rerun-if-env-changed=IPSECMB_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=IPSECMB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=IPSECMB_STATIC");

    let include_dir = env::var_os("IPSECMB_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let header = include_dir.join(HEADER);
    if !header.is_file() {
        // A panic message is the only way to get a readable error out of a build script.
        panic!(
            "\n\nipsecmb-sys: cannot find {} .\n\
             intel-ipsec-mb development files are required for the `ipsecmb` feature.\n\
             Either install them (Debian/Ubuntu: `apt-get install libipsec-mb-dev`),\n\
             point IPSECMB_INCLUDE_DIR (and IPSECMB_LIB_DIR) at a local build,\n\
             or build roamgate-pipeline without it: `cargo build -p roamgate-pipeline --no-default-features`\n\
             (the ring AEAD backend is then the only one).\n\n",
            header.display()
        );
    }
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:include={}", include_dir.display());

    if let Some(lib_dir) = env::var_os("IPSECMB_LIB_DIR") {
        println!(
            "cargo:rustc-link-search=native={}",
            PathBuf::from(lib_dir).display()
        );
    }
    let kind = if env::var_os("IPSECMB_STATIC").is_some_and(|v| v == "1") {
        "static"
    } else {
        "dylib"
    };
    println!("cargo:rustc-link-lib={kind}=IPSec_MB");

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        // The header only applies `aligned(64)` to `struct gcm_key_data` when LINUX is defined
        // (its own build system defines it). The assembly relies on that alignment.
        .clang_arg("-DLINUX")
        // Without this, pre-0.53 compatibility macros (`#define GCM IMB_CIPHER_GCM`, ...) rename
        // struct fields such as `IMB_JOB::u.GCM`.
        .clang_arg("-DNO_COMPAT_IMB_API_053")
        .clang_arg(format!("-I{}", include_dir.display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        // Manager lifecycle.
        .allowlist_type("IMB_MGR")
        .allowlist_function("alloc_mb_mgr")
        .allowlist_function("free_mb_mgr")
        .allowlist_function("init_mb_mgr_auto")
        .allowlist_function("init_mb_mgr_(sse|avx|avx2|avx512)")
        .allowlist_function("imb_get_errno")
        .allowlist_function("imb_get_strerror")
        .allowlist_function("imb_get_version")
        .allowlist_function("imb_get_version_str")
        .allowlist_function("imb_get_feature_flags")
        .allowlist_type("IMB_ARCH")
        .allowlist_var("IMB_FLAG_.*")
        .allowlist_var("IMB_VERSION_NUM")
        // GCM direct API (called through IMB_MGR function pointers).
        .allowlist_type("gcm_key_data")
        .allowlist_type("gcm_context_data")
        .allowlist_var("IMB_GCM_.*_LEN")
        // Job / burst API (used by the burst benchmark).
        .allowlist_type("IMB_JOB")
        .allowlist_type("IMB_ERR")
        .allowlist_type("IMB_STATUS")
        .allowlist_type("IMB_CIPHER_MODE")
        .allowlist_type("IMB_CIPHER_DIRECTION")
        .allowlist_type("IMB_HASH_ALG")
        .allowlist_type("IMB_CHAIN_ORDER")
        .allowlist_type("IMB_KEY_SIZE_BYTES")
        .allowlist_var("IMB_MAX_BURST_SIZE")
        .allowlist_var("IMB_MAX_JOBS")
        // C enums become newtypes: a value the library writes that Rust does not know about
        // must never be undefined behaviour.
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| panic!("ipsecmb-sys: bindgen failed on {}: {e}", header.display()));

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR not set")).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("ipsecmb-sys: writing {}: {e}", out.display()));
}
