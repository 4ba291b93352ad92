//! runc's `run [--detach] ... ID`: create, start and (unless detached) wait for the
//! container, then delete it. (ovlrun's own `run` subcommand, a session, is another thing:
//! the binary tells them apart by the runtime flags before the verb.)

use super::create::{CreateOptions, create_then};
use super::{Notes, Root, RuntimeError};

/// `run`'s flags.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// As for `create`.
    pub create: CreateOptions,
    /// Start the container and return, leaving it running.
    pub detach: bool,
}

/// `run`: the container's exit status (0 when detached), and the notes.
///
/// # Errors
/// [`RuntimeError`]; the container is removed then.
pub fn run(root: &Root, id: &str, opts: &RunOptions) -> Result<(i32, Notes), RuntimeError> {
    let (code, notes) = create_then(
        root,
        id,
        &opts.create,
        opts.detach,
        |mut created, c, dir| {
            created.start()?;
            super::start::release(c, dir)?;
            super::start::poststart(c, dir)?;
            if opts.detach {
                return Ok(0);
            }
            Ok(created.wait()?.code)
        },
    )?;
    if !opts.detach {
        super::delete::delete(root, id, true)?;
    }
    Ok((code, notes))
}
