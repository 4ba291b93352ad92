//! `annotations`: ovlrun's own settings (`org.ovlrun.*`).

use oci_spec::runtime::Spec;

use super::{
    ANNOTATION_DURABLE, ANNOTATION_FS, ANNOTATION_POLICY, ANNOTATION_UPPER, ANNOTATION_WHITEOUT,
    Ctx, OciError, OciSettings,
};
use crate::layers::WhiteoutFormat;
use crate::mount::Backend;
use crate::policy::Policy;

impl Ctx<'_> {
    pub(super) fn annotations(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        let Some(annotations) = spec.annotations() else {
            return Ok(());
        };
        let mut keys: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with("org.ovlrun."))
            .collect();
        // Sorted, so the first error is the same on every run.
        keys.sort();
        for key in keys {
            let value = annotations[key].as_str();
            let field = format!("annotations[{key:?}]");
            let bad_value = |expected: &str| {
                self.bad(field.as_str(), format!("{value:?}: expected {expected}"))
            };
            match key.as_str() {
                ANNOTATION_POLICY => {
                    out.policy = Some(Policy::parse(value).ok_or_else(|| {
                        bad_value("preserve, discard, commit, commit-atomic or ask")
                    })?);
                }
                ANNOTATION_UPPER => {
                    if value.is_empty() {
                        return Err(bad_value("a directory"));
                    }
                    out.upper = Some(self.dir.join(value));
                }
                ANNOTATION_WHITEOUT => {
                    out.whiteout = Some(match value {
                        "kernel" => WhiteoutFormat::Kernel,
                        "aufs" => WhiteoutFormat::Aufs,
                        _ => return Err(bad_value("kernel or aufs")),
                    });
                }
                ANNOTATION_FS => {
                    out.fs = Some(match value {
                        "auto" => Backend::Auto,
                        "kernel" => Backend::Kernel,
                        "fuse" => Backend::Fuse,
                        _ => return Err(bad_value("auto, kernel or fuse")),
                    });
                }
                ANNOTATION_DURABLE => {
                    out.durable = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad_value("true or false")),
                    };
                }
                _ => {
                    return Err(self.bad(
                        field,
                        format!(
                            "unknown ovlrun annotation (known: {ANNOTATION_POLICY}, \
                             {ANNOTATION_UPPER}, {ANNOTATION_WHITEOUT}, {ANNOTATION_FS}, \
                             {ANNOTATION_DURABLE})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
