//! Builds roamgate's DPDK shim and generates bindings for the few DPDK calls used directly.
//!
//! Needs Debian's `libdpdk-dev` (DPDK 22.11) found through pkg-config (`libdpdk.pc`); set
//! `PKG_CONFIG_PATH` for a DPDK installed elsewhere. The shim is compiled with DPDK's own
//! cflags so its static-inline fast-path calls inline into it.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/wrapper.h");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(l) => l,
        Err(e) => {
            // The crate is a workspace member, so `cargo test --workspace` builds it even on a
            // machine without DPDK. It then builds empty; `pipeline`'s `dpdk` feature checks
            // AVAILABLE and stops with a clear message.
            println!(
                "cargo:warning=dpdk-sys: DPDK >= 22.11 not found through pkg-config ({}); \
                 building without it (apt-get install libdpdk-dev pkg-config)",
                e.to_string().lines().next().unwrap_or("")
            );
            std::fs::write(
                out.join("bindings.rs"),
                "/// False: DPDK was not found when this crate was built.\npub const AVAILABLE: bool = false;\n",
            )
            .expect("write bindings.rs");
            return;
        }
    };

    let mut cc = cc::Build::new();
    cc.file("shim/shim.c")
        .include("shim")
        .warnings(true)
        .opt_level(3);
    for p in &dpdk.include_paths {
        cc.include(p);
    }
    // DPDK's headers need its config header and the ISA flags it was built for.
    cc.flag("-include")
        .flag("rte_config.h")
        .flag("-march=corei7");
    cc.compile("roamgate_dpdk_shim");

    let mut b = bindgen::Builder::default()
        .header("shim/wrapper.h")
        .clang_arg("-Ishim")
        .clang_arg("-include")
        .clang_arg("rte_config.h")
        .clang_arg("-march=corei7")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        // The mbuf and mempool are opaque to Rust: fields are reached through the shim.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .allowlist_function("rg_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_eal_get_runtime_dir")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_eth_dev_get_mtu")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_free")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .layout_tests(false)
        .generate_comments(false);
    for p in &dpdk.include_paths {
        b = b.clang_arg(format!("-I{}", p.display()));
    }
    let bindings = b.generate().expect("bindgen over DPDK's headers");
    let text = format!(
        "/// True: DPDK was found and linked.\npub const AVAILABLE: bool = true;\n{bindings}"
    );
    std::fs::write(out.join("bindings.rs"), text).expect("write bindings.rs");
}
