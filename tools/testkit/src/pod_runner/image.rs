//! The image map: there are no container images on a test machine, so each image a pod uses is
//! described by the host files that must appear inside its containers and by its entrypoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One host file (or directory) that appears at `container_path` in every container of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Absolute path inside the container.
    pub container_path: PathBuf,
    /// Host path whose content appears there, read-only.
    pub host_path: PathBuf,
}

/// What an image contributes on top of the host filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSpec {
    pub files: Vec<ImageFile>,
    /// Used for containers without `command`, like an image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// `(uid, gid)` for containers whose securityContext sets no runAsUser (runAsGroup), like
    /// an image's numeric USER. Root when unset.
    pub user: Option<(u32, u32)>,
}

/// Maps image references to [`ImageSpec`]s, plus patterns of images that need nothing but the
/// host filesystem.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    images: Vec<(String, ImageSpec)>,
    host_images: Vec<String>,
}

/// How a container's image resolved.
#[derive(Clone, Debug)]
pub(crate) enum ResolvedImage<'a> {
    Mapped(&'a ImageSpec),
    HostOnly,
}

impl ImageMap {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, image: &str) -> &mut ImageSpec {
        let pos = match self.images.iter().position(|(key, _)| key == image) {
            Some(pos) => pos,
            None => {
                self.images.push((image.to_owned(), ImageSpec::default()));
                self.images.len() - 1
            }
        };
        &mut self.images[pos].1
    }

    /// Makes `host_path` appear at `container_path` in containers of `image`.
    pub fn add_file(
        &mut self,
        image: &str,
        container_path: impl Into<PathBuf>,
        host_path: impl Into<PathBuf>,
    ) -> Result<&mut Self> {
        let container_path = container_path.into();
        let host_path = host_path.into();
        check_image_ref(image)?;
        if !container_path.is_absolute() {
            bail!(
                "image {image}: container path {} is not absolute",
                container_path.display()
            );
        }
        self.entry(image).files.push(ImageFile {
            container_path,
            host_path,
        });
        Ok(self)
    }

    /// Sets the entrypoint used for containers of `image` that have no `command`.
    pub fn set_entrypoint(&mut self, image: &str, entrypoint: Vec<String>) -> Result<&mut Self> {
        check_image_ref(image)?;
        if entrypoint.is_empty() {
            bail!("image {image}: the entrypoint is empty");
        }
        self.entry(image).entrypoint = entrypoint;
        Ok(self)
    }

    /// Sets the user containers of `image` run as when their securityContext names none.
    pub fn set_user(&mut self, image: &str, uid: u32, gid: u32) -> Result<&mut Self> {
        check_image_ref(image)?;
        self.entry(image).user = Some((uid, gid));
        Ok(self)
    }

    /// Parses the CLI form `IMAGE=UID[:GID]` (numeric, as the kubelet needs for runAsNonRoot;
    /// the group defaults to the user ID).
    pub fn set_user_arg(&mut self, arg: &str) -> Result<&mut Self> {
        let usage = || format!("--image-user {arg:?}: expected IMAGE=UID or IMAGE=UID:GID");
        let (image, ids) = arg.split_once('=').with_context(usage)?;
        let (uid, gid) = ids.split_once(':').unwrap_or((ids, ids));
        let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) else {
            bail!(usage());
        };
        self.set_user(image, uid, gid)
    }

    /// Lets images matching `pattern` (`*` matches any run of characters) run with only the
    /// host filesystem.
    pub fn add_host_image(&mut self, pattern: &str) -> Result<&mut Self> {
        if pattern.is_empty() {
            bail!("--host-image needs an image name or pattern");
        }
        self.host_images.push(pattern.to_owned());
        Ok(self)
    }

    /// Parses the CLI form `IMAGE=CONTAINER_PATH:HOST_PATH`.
    pub fn add_file_arg(&mut self, arg: &str) -> Result<&mut Self> {
        let usage = || format!("--image {arg:?}: expected IMAGE=CONTAINER_PATH:HOST_PATH");
        let (image, paths) = arg.split_once('=').with_context(usage)?;
        let (container_path, host_path) = paths.split_once(':').with_context(usage)?;
        if image.is_empty() || container_path.is_empty() || host_path.is_empty() {
            bail!(usage());
        }
        self.add_file(image, container_path, host_path)
    }

    /// Parses the CLI form `IMAGE=PROGRAM` or `IMAGE=["PROGRAM","ARG",…]` (a JSON array).
    pub fn set_entrypoint_arg(&mut self, arg: &str) -> Result<&mut Self> {
        let (image, value) = arg.split_once('=').with_context(|| {
            format!("--entrypoint {arg:?}: expected IMAGE=PROGRAM or IMAGE=[JSON array]")
        })?;
        let entrypoint = if value.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<String>>(value).with_context(|| {
                format!("--entrypoint {arg:?}: the value is not a JSON array of strings")
            })?
        } else {
            vec![value.to_owned()]
        };
        self.set_entrypoint(image, entrypoint)
    }

    /// Finds how `image` runs: its mapping (an exact reference first, then a key without tag or
    /// digest that names the same repository), else the host filesystem if a `--host-image`
    /// pattern matches, else an error.
    pub(crate) fn resolve(&self, image: &str) -> Result<ResolvedImage<'_>> {
        let name = image_name(image);
        let found = self
            .images
            .iter()
            .find(|(key, _)| key == image)
            .or_else(|| self.images.iter().find(|(key, _)| key == name));
        if let Some((_, spec)) = found {
            return Ok(ResolvedImage::Mapped(spec));
        }
        if self
            .host_images
            .iter()
            .any(|pattern| glob_match(pattern, image) || glob_match(pattern, name))
        {
            return Ok(ResolvedImage::HostOnly);
        }
        bail!(
            "image {image:?} is not in the image map: map its files with --image {name}=CONTAINER_PATH:HOST_PATH, or run it on the host filesystem with --host-image {name}"
        )
    }

    /// Checks that every mapped host file exists.
    pub(crate) fn validate(&self) -> Result<()> {
        for (image, spec) in &self.images {
            for file in &spec.files {
                check_host_path(image, &file.host_path)?;
            }
        }
        Ok(())
    }
}

fn check_host_path(image: &str, path: &Path) -> Result<()> {
    std::fs::metadata(path).with_context(|| {
        format!(
            "image {image}: host file {} for the image map is not readable",
            path.display()
        )
    })?;
    Ok(())
}

fn check_image_ref(image: &str) -> Result<()> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c == '=') {
        bail!("{image:?} is not an image reference");
    }
    Ok(())
}

/// The repository part of an image reference: without `@digest` and without `:tag` (a `:` before
/// the last `/` is a registry port, not a tag).
pub(crate) fn image_name(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rfind(':') {
        Some(colon) if !no_digest[colon..].contains('/') => &no_digest[..colon],
        _ => no_digest,
    }
}

/// Glob with `*` as the only wildcard.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No `*` at all: the whole text must equal the pattern.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(pos) => rest = &rest[pos + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(image_name("busybox"), "busybox");
        assert_eq!(image_name("busybox:1.36"), "busybox");
        assert_eq!(image_name("reg.example:5000/a/b"), "reg.example:5000/a/b");
        assert_eq!(
            image_name("reg.example:5000/a/b:v1"),
            "reg.example:5000/a/b"
        );
        assert_eq!(image_name("a/b@sha256:abc"), "a/b");
        assert_eq!(image_name("a/b:v1@sha256:abc"), "a/b");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("restic/*", "restic/restic"));
        assert!(glob_match("*restic*", "docker.io/restic/restic:0.17"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn resolution() {
        let mut map = ImageMap::new();
        map.add_file_arg("reg.example/op=/usr/local/bin/x:/bin/true")
            .unwrap();
        map.add_file_arg("reg.example/op:v2=/v2:/bin/true").unwrap();
        map.add_host_image("*restic*").unwrap();
        let files = |image: &str| match map.resolve(image).unwrap() {
            ResolvedImage::Mapped(spec) => spec.files[0].container_path.clone(),
            ResolvedImage::HostOnly => PathBuf::from("host"),
        };
        assert_eq!(files("reg.example/op"), PathBuf::from("/usr/local/bin/x"));
        assert_eq!(
            files("reg.example/op:v1"),
            PathBuf::from("/usr/local/bin/x")
        );
        assert_eq!(
            files("reg.example/op@sha256:0"),
            PathBuf::from("/usr/local/bin/x")
        );
        assert_eq!(files("reg.example/op:v2"), PathBuf::from("/v2"));
        assert_eq!(files("restic/restic:0.17"), PathBuf::from("host"));
        let err = map.resolve("other:1").unwrap_err().to_string();
        assert!(err.contains("--host-image other"), "{err}");
    }

    #[test]
    fn bad_args() {
        let mut map = ImageMap::new();
        assert!(map.add_file_arg("noequals").is_err());
        assert!(map.add_file_arg("img=/nocolon").is_err());
        assert!(map.add_file_arg("img=relative:/bin/true").is_err());
        assert!(map.set_entrypoint_arg("img=[1,2]").is_err());
        map.set_entrypoint_arg(r#"img=["/bin/sh","-c"]"#).unwrap();
        map.set_entrypoint_arg("img2=/bin/true").unwrap();
        for bad in ["img", "img=", "img=nobody", "img=1:x", "img=-1"] {
            assert!(map.set_user_arg(bad).is_err(), "{bad}");
        }
        map.set_user_arg("img3=65532").unwrap();
        map.set_user_arg("img4=1000:2000").unwrap();
        let user = |image: &str| match map.resolve(image).unwrap() {
            ResolvedImage::Mapped(spec) => spec.user,
            ResolvedImage::HostOnly => None,
        };
        assert_eq!(user("img3:1.0"), Some((65532, 65532)));
        assert_eq!(user("img4"), Some((1000, 2000)));
        assert_eq!(user("img2"), None);
    }
}
