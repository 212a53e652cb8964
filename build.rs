//! Builds the GraphiQL playground (`playground/`, an npm + Vite project) and
//! writes the table of its files that `src/playground.rs` embeds.
//!
//! npm works on a copy of the playground's sources inside `OUT_DIR`: the
//! source tree is never written to, and builds of different profiles, which
//! may run at the same time, never share a `node_modules`. `npm ci` runs only
//! when that copy has no `node_modules` yet or the lockfile changed, and Cargo
//! reruns this script only when a file of the playground (or this script)
//! changed, so ordinary Rust rebuilds never start npm.

use std::{
    env, fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// The files and folders of `playground/` that the build reads.
const SOURCES: &[&str] = &[
    "package.json",
    "package-lock.json",
    "index.html",
    "vite.config.js",
    "src",
];

/// Written into `node_modules` after a successful `npm ci`: the lockfile it
/// installed, so a changed lockfile means a new install.
const LOCK_STAMP: &str = "node_modules/.talus-tally-installed-lock.json";

fn main() {
    if let Err(message) = build() {
        eprintln!("\nerror: could not build the GraphiQL playground (playground/).\n\n{message}\n");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NPM");
    for name in SOURCES {
        println!("cargo:rerun-if-changed=playground/{name}");
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by Cargo"));
    let source = manifest_dir.join("playground");
    let work = out_dir.join("playground");
    let dist = out_dir.join("playground-dist");

    for name in SOURCES {
        copy(&source.join(name), &work.join(name)).map_err(|e| {
            format!(
                "Failed to copy playground/{name} into {}: {e}",
                work.display()
            )
        })?;
    }

    let lock = fs::read(work.join("package-lock.json")).map_err(|e| e.to_string())?;
    if fs::read(work.join(LOCK_STAMP)).ok().as_deref() != Some(lock.as_slice()) {
        npm(
            &work,
            &[
                "ci",
                "--include=dev",
                "--ignore-scripts",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ],
        )?;
        fs::write(work.join(LOCK_STAMP), &lock).map_err(|e| e.to_string())?;
    }

    let dist_arg = dist.to_str().ok_or("OUT_DIR is not valid UTF-8")?;
    npm(
        &work,
        &[
            "run",
            "build",
            "--silent",
            "--",
            "--outDir",
            dist_arg,
            "--emptyOutDir",
        ],
    )?;

    let table =
        asset_table(&dist).map_err(|e| format!("Failed to read {}: {e}", dist.display()))?;
    fs::write(out_dir.join("playground_assets.rs"), table).map_err(|e| e.to_string())
}

/// Copies a file, or a folder with everything in it, replacing what was there.
fn copy(from: &Path, to: &Path) -> io::Result<()> {
    if from.is_dir() {
        if to.exists() {
            fs::remove_dir_all(to)?;
        }
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, to).map(drop)
    }
}

/// Runs npm quietly in `dir`; its output is shown only when it fails.
fn npm(dir: &Path, args: &[&str]) -> Result<(), String> {
    let program = env::var("NPM")
        .unwrap_or_else(|_| if cfg!(windows) { "npm.cmd" } else { "npm" }.to_owned());
    let command_line = format!("{program} {}", args.join(" "));
    let output = Command::new(&program)
        .args(args)
        .current_dir(dir)
        // Cargo sets DEBUG=true|false for build scripts; Node tools read DEBUG
        // as a list of loggers to switch on.
        .env_remove("DEBUG")
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "`{program}` was not found. The server embeds a web page built with npm: \
                     install Node.js 20.19 or newer with npm (https://nodejs.org), or set the \
                     NPM environment variable to the npm executable, then build again."
                )
            } else {
                format!("Failed to start `{command_line}`: {e}")
            }
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{command_line}` failed ({}) in {}:\n{}{}",
        output.status,
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    ))
}

/// Rust source for the built files: `INDEX_HTML`, and `ASSETS` with every
/// other file under the URL path `/playground/...` (Vite's `base`).
fn asset_table(dist: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    list_files(dist, &mut files)?;
    files.sort();

    let mut table =
        String::from("// @generated by build.rs from the playground's build output.\n\n");
    let index = dist.join("index.html");
    table.push_str(&format!(
        "static INDEX_HTML: &str = include_str!({:?});\n\n",
        path_str(&index)?
    ));
    table.push_str("static ASSETS: &[Asset] = &[\n");
    for file in files.iter().filter(|file| **file != index) {
        let relative = file.strip_prefix(dist).expect("listed under dist");
        let url_path = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        table.push_str(&format!(
            "    Asset {{ path: {:?}, content_type: {:?}, bytes: include_bytes!({:?}) }},\n",
            format!("/playground/{url_path}"),
            content_type(file),
            path_str(file)?,
        ));
    }
    table.push_str("];\n");
    Ok(table)
}

fn list_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn path_str(path: &Path) -> io::Result<&str> {
    path.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8: {}", path.display()),
        )
    })
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
