//! `cargo xtask package`: a Debian package of vip-agent, built with `dpkg-deb` (no cargo-deb).
//!
//! Steps: release build of `vip-agent` (its build script embeds the XDP object), man pages and
//! shell completions from the built binary (`vip-agent generate`, the same clap definition that
//! parses the command line), a staging tree under `target/debian/`, `DEBIAN/` from `dist/debian/`,
//! then `dpkg-deb --build` into `target/debian/vip-agent_<version>_<arch>.deb`.
//!
//! Contents:
//! * `/usr/bin/vip-agent`;
//! * `/lib/systemd/system/vip-agent.service` and `vip-agent@.service` (from `dist/systemd/`);
//! * `/etc/vip-agent/vip-agent.yml` (from `dist/vip-agent.yml`), a conffile;
//! * `/usr/share/man/man8/vip-agent.8.gz` and one page per subcommand;
//! * bash, zsh and fish completions in Debian's vendor directories;
//! * `/usr/share/doc/vip-agent/`: copyright, README.md, examples/pigsty-vip-manager.yml.
//!
//! The maintainer scripts never enable or start anything (see `dist/debian/`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, run_cmd, target_dir, workspace};

const PACKAGE: &str = "vip-agent";

/// Shared libraries the binary may link, with the Debian package that provides each.
const SHARED_LIBRARIES: &[(&str, &str)] = &[
    ("libc.so.6", "libc6"),
    ("libm.so.6", "libc6"),
    ("ld-linux-x86-64.so.2", "libc6"),
    ("ld-linux-aarch64.so.1", "libc6"),
    ("libgcc_s.so.1", "libgcc-s1"),
];

/// Completion scripts: `vip-agent generate completions <shell>` and where Debian wants them.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/vip-agent"),
    ("zsh", "usr/share/zsh/vendor-completions/_vip-agent"),
    ("fish", "usr/share/fish/vendor_completions.d/vip-agent.fish"),
];

/// Build the package; returns the path of the `.deb`.
pub(crate) fn run() -> Result<PathBuf> {
    let started = std::time::Instant::now();
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("dpkg", "dpkg"),
        ("gzip", "gzip"),
        ("md5sum", "coreutils"),
        ("readelf", "binutils"),
        ("strip", "binutils"),
    ] {
        ensure!(
            on_path(tool),
            "{tool} is not installed; install it with `apt-get install {package}` and run \
             `cargo xtask package` again"
        );
    }

    eprintln!("xtask package: building vip-agent (release; the XDP object is built and embedded)");
    run_cmd(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        PACKAGE,
        "--bin",
        PACKAGE,
    ]))
    .context(
        "the release build failed (compiler output above); if the BPF toolchain is missing, run \
         `cargo xtask setup` first",
    )?;
    let binary = target_dir().join("release").join(PACKAGE);

    let version = binary_version(&binary)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    ensure!(
        !arch.is_empty(),
        "`dpkg --print-architecture` printed nothing"
    );

    let out_dir = target_dir().join("debian");
    let root = out_dir.join(format!("{PACKAGE}_{version}_{arch}"));
    if root.exists() {
        fs::remove_dir_all(&root)
            .with_context(|| format!("remove the old staging tree {}", root.display()))?;
    }
    eprintln!("xtask package: staging {}", root.display());
    stage(&root, &binary)?;

    eprintln!("xtask package: writing DEBIAN/ (control, conffiles, maintainer scripts, md5sums)");
    create_dir(&root.join("DEBIAN"))?;
    // Directories 0755 whatever the umask (dpkg-deb refuses a DEBIAN/ it cannot trust).
    for dir in dirs_under(&root)? {
        set_mode(&dir, 0o755)?;
    }
    let depends = depends(&binary)?;
    write_control(&root, &version, &arch, &depends)?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    eprintln!("xtask package: dpkg-deb --build -> {}", deb.display());
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb)
            // Its progress line with ours on stderr: stdout is only the package's path.
            .stdout(std::io::stderr()),
    )
    .context("dpkg-deb could not build the package (its message is above)")?;
    let shown = deb.strip_prefix(workspace()).unwrap_or(&deb).display();
    eprintln!(
        "xtask package: done in {:.0?}; inspect with `dpkg-deb -I {shown}` and \
         `dpkg-deb -c {shown}`, install with `apt install ./{shown}`",
        started.elapsed(),
    );
    // The one line on stdout: the package's path, for scripts and tests.
    println!("{}", deb.display());
    Ok(deb)
}

/// The staging tree: every file of the package, with its final mode.
fn stage(root: &Path, binary: &Path) -> Result<()> {
    let ws = workspace();
    let staged = root.join("usr/bin/vip-agent");
    install(binary, &staged, 0o755)?;
    // As dh_strip does: symbols off (the XDP object is data, untouched), about a third smaller.
    run_cmd(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&staged),
    )?;
    for unit in ["vip-agent.service", "vip-agent@.service"] {
        install(
            &ws.join("dist/systemd").join(unit),
            &root.join("lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    // 0640: the file gets an etcd password once it is configured.
    install(
        &ws.join("dist/vip-agent.yml"),
        &root.join("etc/vip-agent/vip-agent.yml"),
        0o640,
    )?;

    eprintln!("xtask package: generating the man pages from the binary");
    let man_dir = root.join("usr/share/man/man8");
    create_dir(&man_dir)?;
    let listed = output(
        Command::new(binary)
            .args(["generate", "man", "--out"])
            .arg(&man_dir),
    )?;
    let pages: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        pages.iter().any(|p| p.ends_with("/vip-agent.8")),
        "`vip-agent generate man` did not write vip-agent.8 (it wrote: {pages:?})"
    );
    for page in pages {
        run_cmd(Command::new("gzip").args(["-9n", "--force", page]))?;
    }

    eprintln!("xtask package: generating bash, zsh and fish completions");
    for (shell, path) in COMPLETIONS {
        let script = output(Command::new(binary).args(["generate", "completions", shell]))?;
        ensure!(
            script.contains("vip-agent"),
            "the {shell} completion script does not mention vip-agent"
        );
        write(&root.join(path), &script, 0o644)?;
    }

    let doc = root.join("usr/share/doc/vip-agent");
    install(
        &ws.join("dist/debian/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;
    install(&ws.join("README.md"), &doc.join("README.md"), 0o644)?;
    install(
        &ws.join("examples/pigsty-vip-manager.yml"),
        &doc.join("examples/pigsty-vip-manager.yml"),
        0o644,
    )?;
    Ok(())
}

/// `Depends:` from the binary's shared libraries (`readelf -d`) and the newest glibc symbol
/// version it uses (`readelf -V`), so the package never installs where the binary cannot run.
fn depends(binary: &Path) -> Result<String> {
    let dynamic = output(Command::new("readelf").arg("-dW").arg(binary))?;
    let mut packages: Vec<&str> = Vec::new();
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let library = line
            .split('[')
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .with_context(|| format!("cannot read the library name in {line:?} (readelf -d)"))?;
        let Some((_, package)) = SHARED_LIBRARIES.iter().find(|(lib, _)| *lib == library) else {
            bail!(
                "the binary links {library}, which the package does not declare: add it with its \
                 Debian package to SHARED_LIBRARIES in xtask/src/package.rs"
            );
        };
        if !packages.contains(package) {
            packages.push(package);
        }
    }
    // libc6 first, then the others in the table's order.
    packages.sort_by_key(|p| SHARED_LIBRARIES.iter().position(|(_, q)| q == p));
    ensure!(
        packages.contains(&"libc6"),
        "readelf -d found no libc in {}; is it a dynamically linked Linux binary?",
        binary.display()
    );
    let versions = output(Command::new("readelf").arg("-VW").arg(binary))?;
    let glibc = newest_glibc(&versions).with_context(|| {
        format!(
            "readelf -V shows no GLIBC_ symbol version in {}",
            binary.display()
        )
    })?;
    Ok(packages
        .iter()
        .map(|p| {
            if *p == "libc6" {
                format!("libc6 (>= {glibc})")
            } else {
                (*p).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The newest `GLIBC_x.y[.z]` version named in `readelf -V` output, as `x.y[.z]`.
fn newest_glibc(readelf: &str) -> Option<String> {
    readelf
        .split(|c: char| c.is_whitespace())
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts.filter(|p| p.len() >= 2).map(|p| (p, v))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.to_owned())
}

fn write_control(root: &Path, version: &str, arch: &str, depends: &str) -> Result<()> {
    let src = workspace().join("dist/debian");
    let debian = root.join("DEBIAN");
    create_dir(&debian)?;

    let mut md5sums = String::new();
    let mut installed_bytes = 0u64;
    let conffiles = read(&src.join("conffiles"))?;
    for file in files_under(root)? {
        let relative = file
            .strip_prefix(root)
            .with_context(|| format!("{} is outside the staging tree", file.display()))?;
        if relative.starts_with("DEBIAN") {
            continue;
        }
        installed_bytes += fs::metadata(&file)
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        let absolute = Path::new("/").join(relative);
        if conffiles
            .lines()
            .any(|c| Path::new(c.trim()) == absolute.as_path())
        {
            continue;
        }
        let sum = output(Command::new("md5sum").arg(&file))?;
        let hash = sum
            .split_whitespace()
            .next()
            .with_context(|| format!("md5sum printed nothing for {}", file.display()))?;
        md5sums.push_str(&format!("{hash}  {}\n", relative.display()));
    }
    for conffile in conffiles.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let staged = root.join(conffile.trim_start_matches('/'));
        ensure!(
            staged.is_file(),
            "dist/debian/conffiles names {conffile}, which the package does not contain"
        );
    }

    let control = read(&src.join("control.in"))?
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch)
        .replace("@DEPENDS@", depends)
        .replace(
            "@INSTALLED_SIZE@",
            &installed_bytes.div_ceil(1024).to_string(),
        );
    let unfilled =
        control.split('@').skip(1).step_by(2).find(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
    if let Some(word) = unfilled {
        bail!("dist/debian/control.in has a placeholder xtask does not fill: @{word}@");
    }
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    write(&debian.join("md5sums"), &md5sums, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        install(&src.join(script), &debian.join(script), 0o755)?;
    }
    Ok(())
}

/// `vip-agent 0.1.0` from `vip-agent --version`: the version the binary reports is the package's.
fn binary_version(binary: &Path) -> Result<String> {
    let line = output(Command::new(binary).arg("--version"))?;
    let version = line
        .trim()
        .strip_prefix("vip-agent ")
        .with_context(|| format!("unexpected `vip-agent --version` output: {line:?}"))?;
    ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c)),
        "`vip-agent --version` says {version:?}, which is not a Debian version"
    );
    Ok(version.to_owned())
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    walk(dir).map(|(_, files)| files)
}

fn dirs_under(dir: &Path) -> Result<Vec<PathBuf>> {
    walk(dir).map(|(dirs, _)| dirs)
}

/// `(directories, files)` under `dir`, `dir` itself included in the directories; sorted.
fn walk(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("list {}", dir.display()))?
                .path();
            if path.is_dir() {
                dirs.push(path.clone());
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(tool).is_file())
}

/// Run `cmd` and return its stdout; fail with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8 output"))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Copy `from` to `to` (creating its directory) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        create_dir(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

/// Write `text` to `to` (creating its directory) with `mode`.
fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        create_dir(dir)?;
    }
    fs::write(to, text).with_context(|| format!("write {}", to.display()))?;
    set_mode(to, mode)
}

#[cfg(test)]
mod tests {
    use super::newest_glibc;

    #[test]
    fn newest_glibc_compares_numerically() {
        let readelf = "  0x0010:   Name: GLIBC_2.9  Flags: none  Version: 5\n\
                       0x0020:   Name: GLIBC_2.34  Flags: none  Version: 4\n\
                       0x0030:   Name: GLIBC_2.3.4  Flags: none  Version: 3\n\
                       0x0040:   Name: GLIBC_PRIVATE  Flags: none\n\
                       0x0050:   Name: GCC_3.0  Flags: none\n";
        assert_eq!(newest_glibc(readelf).as_deref(), Some("2.34"));
        assert_eq!(newest_glibc("Name: GCC_3.0"), None);
    }
}
