//! `process`: the command, its user, environment, capabilities and limits.

use std::collections::BTreeSet;
use std::ffi::OsString;

use oci_spec::runtime::{Capabilities, LinuxCapabilities, Process, Spec};

use super::{Ctx, OciError, OciSettings};

impl Ctx<'_> {
    pub(super) fn process(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        let Some(p) = spec.process() else {
            return Ok(());
        };
        out.terminal = p.terminal();
        for (field, id) in [
            ("process.user.uid", p.user().uid()),
            ("process.user.gid", p.user().gid()),
        ] {
            if id > crate::config::MAX_ID {
                return Err(self.bad(
                    field,
                    format!("{id}: not a valid id (0 to {})", crate::config::MAX_ID),
                ));
            }
        }
        out.umask = p.user().umask();
        if out.umask.is_some_and(|u| u > 0o777) {
            return Err(self.bad("process.user.umask", "not a umask (0 to 0777)"));
        }
        out.uid = Some(p.user().uid());
        out.groups = p.user().additional_gids().clone().unwrap_or_default();
        out.gid = Some(p.user().gid());
        out.args = p
            .args()
            .as_ref()
            .filter(|a| !a.is_empty())
            .map(|a| a.iter().map(OsString::from).collect());
        if let Some(env) = p.env() {
            for (i, kv) in env.iter().enumerate() {
                if !kv.contains('=') {
                    return Err(self.bad(format!("process.env[{i}]"), "expected KEY=VALUE"));
                }
            }
            out.env = Some(env.iter().map(OsString::from).collect());
        }
        if !p.cwd().is_absolute() {
            return Err(self.bad(
                "process.cwd",
                format!("{}: must be absolute", p.cwd().display()),
            ));
        }
        out.cwd = Some(p.cwd().clone());
        if let Some(caps) = p.capabilities() {
            self.capabilities(caps, out)?;
        }
        Ok(())
    }

    /// The five sets as given; the launcher applies them in runc's order (bounding first,
    /// ambient last), so a config asks for exactly what it gets.
    fn capabilities(
        &self,
        caps: &LinuxCapabilities,
        out: &mut OciSettings,
    ) -> Result<(), OciError> {
        let names =
            |field: &str, set: &Option<Capabilities>| -> Result<BTreeSet<String>, OciError> {
                set.iter()
                    .flatten()
                    .map(|c| {
                        let name = format!("CAP_{c}");
                        // The flag name is only used in parse_capability's own error.
                        crate::config::parse_capability("--cap-add", &name)
                            .map_err(|_| self.bad(field, format!("{name}: unknown capability")))
                    })
                    .collect()
            };
        let sets = crate::config::CapabilitySets {
            bounding: names("process.capabilities.bounding", caps.bounding())?,
            effective: names("process.capabilities.effective", caps.effective())?,
            permitted: names("process.capabilities.permitted", caps.permitted())?,
            inheritable: names("process.capabilities.inheritable", caps.inheritable())?,
            ambient: names("process.capabilities.ambient", caps.ambient())?,
        };
        // The kernel refuses these combinations; say which field, before anything runs.
        for (field, set) in [
            ("process.capabilities.effective", &sets.effective),
            ("process.capabilities.ambient", &sets.ambient),
        ] {
            if let Some(c) = set.difference(&sets.permitted).next() {
                return Err(self.bad(field, format!("{c} is not in permitted")));
            }
        }
        out.capabilities = Some(sets);
        Ok(())
    }

    /// `process.rlimits`, `process.noNewPrivileges` and `process.oomScoreAdj`.
    pub(super) fn process_hardening(
        &self,
        p: &Process,
        out: &mut OciSettings,
    ) -> Result<(), OciError> {
        for (i, r) in p.rlimits().iter().flatten().enumerate() {
            let field = format!("process.rlimits[{i}]");
            let name = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let limit = crate::config::rlimit(&field, &name, r.soft(), r.hard())
                .map_err(|e| self.bad(field.as_str(), e.to_string()))?;
            out.rlimits.retain(|old| old.resource != limit.resource);
            out.rlimits.push(limit);
        }
        out.no_new_privs = p.no_new_privileges();
        out.oom_score_adj = p.oom_score_adj();
        Ok(())
    }
}
