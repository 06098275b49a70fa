//! Generates minimal bindings to intel-ipsec-mb (`intel-ipsec-mb.h`) for AES-GCM and links
//! `libIPSec_MB`.
//!
//! Environment overrides:
//! - `IPSECMB_INCLUDE_DIR`: directory holding `intel-ipsec-mb.h` (default `/usr/include`).
//! - `IPSECMB_LIB_DIR`: directory holding `libIPSec_MB.{so,a}` (default: the linker's search path).
//! - `IPSECMB_STATIC=1`: link the static library.
//! - `IPSECMB_REQUIRE=1`: fail the build when the library cannot be used (CI, packaging).
//!
//! Without the header (or without libclang for bindgen) the crate builds empty: a cargo warning
//! says what is missing, `AVAILABLE` is false, and the `links` metadata `available=0` tells
//! `roamgate-pipeline`'s build script to leave the ipsec-mb backend out (ring is then the AEAD).

use std::env;
use std::path::PathBuf;

const HEADER: &str = "intel-ipsec-mb.h";

fn main() {
    println!("cargo:rerun-if-env-changed=IPSECMB_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=IPSECMB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=IPSECMB_STATIC");
    println!("cargo:rerun-if-env-changed=IPSECMB_REQUIRE");

    let include_dir = env::var_os("IPSECMB_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let header = include_dir.join(HEADER);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR not set")).join("bindings.rs");
    if !header.is_file() {
        // The crate is built by default (the fast path), so a machine without the library
        // must still build: the crate builds empty, says so, and `roamgate-pipeline` falls
        // back to ring (it reads `available` through the `links` metadata).
        // Installing the package adds the header to this directory, which changes its mtime.
        println!("cargo:rerun-if-changed={}", include_dir.display());
        fail_or_empty(
            &out,
            &format!(
                "cannot find {}: building without intel-ipsec-mb, so AES-GCM uses ring (slower, \
                 see the README). For the fast path: apt-get install libipsec-mb-dev (or point \
                 IPSECMB_INCLUDE_DIR / IPSECMB_LIB_DIR at a local build)",
                header.display()
            ),
        );
        return;
    }
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:include={}", include_dir.display());

    let generated = std::panic::catch_unwind(|| generate(&include_dir, &header));
    let bindings = match generated {
        Ok(Ok(b)) => Some(b),
        Ok(Err(e)) => fail_or_empty(
            &out,
            &format!(
                "bindgen failed on {}: {e}; building without intel-ipsec-mb, so AES-GCM uses ring",
                header.display()
            ),
        ),
        // bindgen panics when it cannot load libclang.
        Err(_) => fail_or_empty(
            &out,
            "bindgen could not run (is libclang installed? apt-get install libclang-dev); \
             building without intel-ipsec-mb, so AES-GCM uses ring",
        ),
    };
    let Some(bindings) = bindings else { return };
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

    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("ipsecmb-sys: writing {}: {e}", out.display()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap_or_else(|e| panic!("ipsecmb-sys: writing {}: {e}", out.display()));
    std::io::Write::write_all(
        &mut f,
        b"\n/// True: intel-ipsec-mb was found when this crate was built.\npub const AVAILABLE: bool = true;\n",
    )
    .unwrap_or_else(|e| panic!("ipsecmb-sys: writing {}: {e}", out.display()));
    println!("cargo:available=1");
}

/// Without the library this crate holds only `AVAILABLE = false`; a warning says what is
/// missing and how to get the fast path.
fn build_empty(out: &std::path::Path, why: &str) {
    println!("cargo:warning=ipsecmb-sys: {why}");
    println!("cargo:available=0");
    std::fs::write(
        out,
        "/// False: intel-ipsec-mb was not found when this crate was built.\npub const AVAILABLE: bool = false;\n",
    )
    .unwrap_or_else(|e| panic!("ipsecmb-sys: writing {}: {e}", out.display()));
}

/// The library cannot be built against: with `IPSECMB_REQUIRE=1` (CI, packaging: the fast path
/// must be there) that is an error; otherwise the crate builds empty and says why.
fn fail_or_empty(out: &std::path::Path, why: &str) -> Option<bindgen::Bindings> {
    if env::var_os("IPSECMB_REQUIRE").is_some_and(|v| v == "1") {
        panic!("ipsecmb-sys: {why}");
    }
    build_empty(out, why);
    None
}

fn generate(
    include_dir: &std::path::Path,
    header: &std::path::Path,
) -> Result<bindgen::Bindings, bindgen::BindgenError> {
    bindgen::Builder::default()
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
}
