//! The directory tree of the mount: inodes, implicit directories and lookup counts.
//!
//! Staged names may contain `/`; the directories along the way exist as long as something
//! is staged below them. Inode numbers are never reused, so the kernel can never confuse
//! an old entry with a new one (no generation numbers needed). Removing an entry detaches
//! it from the tree, like unlink: the kernel may still hold lookups on it and open handles
//! keep reading; the node is freed once the kernel forgets it.
//!
//! Pure data structure: no I/O, no locks (the caller holds the namespace lock briefly).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use fusestream_shared::names::{self, NameError};
use thiserror::Error;

use crate::object::Object;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NamespaceError {
    #[error("invalid name {}: {reason}", names::shown(name))]
    InvalidName { name: String, reason: NameError },
    #[error("{} is already staged", names::shown(.0))]
    AlreadyExists(String),
    #[error(
        "{} conflicts with {}, which is {what}",
        names::shown(name),
        names::shown(existing)
    )]
    Conflict {
        name: String,
        existing: String,
        what: &'static str,
    },
    #[error("{} is not staged", names::shown(.0))]
    NotFound(String),
    #[error("{} was staged by another user", names::shown(.0))]
    NotOwner(String),
}

/// A name that left the tree; the kernel may still cache it and must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlinked {
    pub parent: u64,
    pub ino: u64,
    pub name: String,
}

#[derive(Debug)]
pub enum NodeKind {
    Dir { children: BTreeMap<String, u64> },
    File { object: Arc<Object> },
}

#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: NodeKind,
    /// When this node appeared (directories' mtime; files use the object's Last-Modified).
    pub created: SystemTime,
    /// Lookups the kernel holds (answered lookups minus forgets).
    lookups: u64,
    /// Still reachable from the root.
    attached: bool,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }
}

/// Where a walk of [`Namespace::files_after`] stands.
struct Walk<'a, F> {
    left: usize,
    /// The path of the node being looked at.
    path: String,
    last: Option<String>,
    visit: &'a mut F,
}

enum Flow {
    Done,
    Stopped,
}

#[derive(Debug)]
pub struct Namespace {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Staged files and their bytes, kept as they change so that `statfs` is O(1).
    totals: Totals,
}

/// How many files are staged, and their declared sizes added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    /// Wide enough that no number of files can overflow it.
    pub bytes: u128,
}

impl Default for Namespace {
    fn default() -> Self {
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: String::new(),
            kind: NodeKind::Dir {
                children: BTreeMap::new(),
            },
            created: SystemTime::now(),
            lookups: 0,
            attached: true,
        };
        Namespace {
            nodes: HashMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            totals: Totals::default(),
        }
    }
}

impl Namespace {
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// What is staged, in O(1).
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Finds `name` in directory `parent` and counts a kernel lookup on it.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<&Node, crate::FsError> {
        let ino = match &self
            .nodes
            .get(&parent)
            .ok_or(crate::FsError::NotFound)?
            .kind
        {
            NodeKind::Dir { children } => *children.get(name).ok_or(crate::FsError::NotFound)?,
            NodeKind::File { .. } => return Err(crate::FsError::NotADirectory),
        };
        let node = self
            .nodes
            .get_mut(&ino)
            .expect("children point at live nodes");
        node.lookups += 1;
        Ok(node)
    }

    /// The kernel dropped `n` lookups on `ino`; a detached node with none left is freed.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && !node.attached && ino != ROOT_INO {
                self.nodes.remove(&ino);
            }
        }
    }

    /// Stages `object` at `name`, creating directories on the way. With `replace`, an
    /// existing file there is detached (and returned) and the new one gets a fresh inode,
    /// if `may_replace` agrees to replace it.
    pub fn insert(
        &mut self,
        name: &str,
        object: Arc<Object>,
        replace: bool,
        may_replace: impl FnOnce(&Object) -> bool,
    ) -> Result<(u64, Option<Unlinked>), NamespaceError> {
        let components = names::components(name).map_err(|reason| NamespaceError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        let (file_name, dirs) = components.split_last().expect("components is never empty");
        // Check everything before changing anything, so a refused insert changes nothing.
        let mut dir = Some(ROOT_INO);
        for (depth, component) in dirs.iter().enumerate() {
            let Some(current) = dir else { break };
            dir = match self.child(current, component) {
                Some(node) if node.is_dir() => Some(node.ino),
                Some(_) => {
                    return Err(NamespaceError::Conflict {
                        name: name.to_string(),
                        existing: components[..=depth].join("/"),
                        what: "a staged file",
                    });
                }
                None => None,
            };
        }
        if let Some(existing) = dir.and_then(|d| self.child(d, file_name)) {
            if existing.is_dir() {
                return Err(NamespaceError::Conflict {
                    name: name.to_string(),
                    existing: name.to_string(),
                    what: "a directory of staged files",
                });
            }
            if !replace {
                return Err(NamespaceError::AlreadyExists(name.to_string()));
            }
            if let NodeKind::File { object } = &existing.kind
                && !may_replace(object)
            {
                return Err(NamespaceError::NotOwner(name.to_string()));
            }
        }

        let mut parent = ROOT_INO;
        for component in dirs {
            parent = match self.child(parent, component) {
                Some(node) => node.ino,
                None => self.add_node(
                    parent,
                    component,
                    NodeKind::Dir {
                        children: BTreeMap::new(),
                    },
                ),
            };
        }
        let replaced = self
            .child(parent, file_name)
            .map(|n| n.ino)
            .map(|old| self.detach(old));
        Ok((
            self.add_node(parent, file_name, NodeKind::File { object }),
            replaced,
        ))
    }

    /// Detaches the file staged at `name`, if `may_remove` agrees, and prunes directories
    /// left empty; returns the names that went away, deepest first.
    pub fn remove(
        &mut self,
        name: &str,
        may_remove: impl FnOnce(&Object) -> bool,
    ) -> Result<Vec<Unlinked>, NamespaceError> {
        let not_found = || NamespaceError::NotFound(name.to_string());
        let components = names::components(name).map_err(|_| not_found())?;
        let mut ino = ROOT_INO;
        for component in &components {
            ino = self.child(ino, component).ok_or_else(not_found)?.ino;
        }
        match &self.nodes[&ino].kind {
            NodeKind::Dir { .. } => return Err(not_found()),
            NodeKind::File { object } if !may_remove(object) => {
                return Err(NamespaceError::NotOwner(name.to_string()));
            }
            NodeKind::File { .. } => {}
        }
        let mut parent = self.nodes[&ino].parent;
        let mut unlinked = vec![self.detach(ino)];
        while parent != ROOT_INO && self.is_empty_dir(parent) {
            let next = self.nodes[&parent].parent;
            unlinked.push(self.detach(parent));
            parent = next;
        }
        Ok(unlinked)
    }

    /// The path of `ino` in the mount ("" for the root), if it exists; a node no longer
    /// reachable (unstaged, still open) keeps the path it had.
    pub fn path(&self, ino: u64) -> Option<String> {
        let mut names = Vec::new();
        let mut node = self.nodes.get(&ino)?;
        while node.ino != ROOT_INO {
            names.push(node.name.as_str());
            node = self.nodes.get(&node.parent)?;
        }
        names.reverse();
        Some(names.join("/"))
    }

    /// The staged files' objects, in no order (no paths built: cheap for totals).
    pub fn objects(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.nodes.values().filter_map(|n| match &n.kind {
            NodeKind::File { object } if n.attached => Some(object),
            _ => None,
        })
    }

    /// Visits the staged files in path order (components compared bytewise: a folder's
    /// files come together), starting after the file `after` ("" for the first), at most
    /// `budget` of them, until `visit` says stop (the file it refused is not visited).
    /// Returns the path of the last file visited if the walk stopped before the end (the
    /// next call's `after`), `None` if it reached the end. A call costs O(depth x log
    /// fan-out + budget), whatever the size of the tree, so callers page through a large
    /// tree in short lock holds.
    pub fn files_after(
        &self,
        after: &str,
        budget: usize,
        mut visit: impl FnMut(&str, u64, &Arc<Object>) -> bool,
    ) -> Option<String> {
        let cursor: Vec<&str> = after.split('/').filter(|c| !c.is_empty()).collect();
        let mut walk = Walk {
            left: budget,
            path: String::new(),
            last: None,
            visit: &mut visit,
        };
        match self.walk_dir(ROOT_INO, &cursor, &mut walk) {
            Flow::Stopped => Some(walk.last.unwrap_or_else(|| after.to_string())),
            Flow::Done => None,
        }
    }

    fn walk_dir<F: FnMut(&str, u64, &Arc<Object>) -> bool>(
        &self,
        dir: u64,
        cursor: &[&str],
        walk: &mut Walk<'_, F>,
    ) -> Flow {
        use std::ops::Bound;
        let NodeKind::Dir { children } = &self.nodes[&dir].kind else {
            return Flow::Done;
        };
        let from = cursor
            .first()
            .map_or(Bound::Unbounded, |c| Bound::Included(*c));
        for (name, &ino) in children.range::<str, _>((from, Bound::Unbounded)) {
            let resumes_here = cursor.first() == Some(&name.as_str());
            let depth = walk.path.len();
            if depth > 0 {
                walk.path.push('/');
            }
            walk.path.push_str(name);
            let flow = match &self.nodes[&ino].kind {
                // The cursor's own file was visited by the previous call.
                NodeKind::File { .. } if resumes_here && cursor.len() == 1 => Flow::Done,
                NodeKind::File { object } => {
                    if walk.left == 0 || !(walk.visit)(&walk.path, ino, object) {
                        Flow::Stopped
                    } else {
                        walk.left -= 1;
                        walk.last = Some(walk.path.clone());
                        Flow::Done
                    }
                }
                NodeKind::Dir { .. } => {
                    let inner = if resumes_here { &cursor[1..] } else { &[][..] };
                    self.walk_dir(ino, inner, walk)
                }
            };
            walk.path.truncate(depth);
            if let Flow::Stopped = flow {
                return Flow::Stopped;
            }
        }
        Flow::Done
    }

    /// The staged file at `name`.
    pub fn file(&self, name: &str) -> Option<(u64, Arc<Object>)> {
        let mut ino = ROOT_INO;
        for component in names::components(name).ok()? {
            ino = self.child(ino, component)?.ino;
        }
        match &self.nodes[&ino].kind {
            NodeKind::File { object } => Some((ino, object.clone())),
            NodeKind::Dir { .. } => None,
        }
    }

    fn child(&self, dir: u64, name: &str) -> Option<&Node> {
        match &self.nodes.get(&dir)?.kind {
            NodeKind::Dir { children } => children.get(name).and_then(|i| self.nodes.get(i)),
            NodeKind::File { .. } => None,
        }
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(&self.nodes[&ino].kind, NodeKind::Dir { children } if children.is_empty())
    }

    fn add_node(&mut self, parent: u64, name: &str, kind: NodeKind) -> u64 {
        if let NodeKind::File { object } = &kind {
            self.totals.files += 1;
            self.totals.bytes += u128::from(object.size());
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                name: name.to_string(),
                kind,
                created: SystemTime::now(),
                lookups: 0,
                attached: true,
            },
        );
        if let Some(NodeKind::Dir { children }) = self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    /// Takes attached node `ino` out of the tree.
    fn detach(&mut self, ino: u64) -> Unlinked {
        let node = self.nodes.get_mut(&ino).expect("detach of a live node");
        node.attached = false;
        if let NodeKind::File { object } = &node.kind {
            self.totals.files -= 1;
            self.totals.bytes -= u128::from(object.size());
        }
        let (parent, name, lookups) = (node.parent, node.name.clone(), node.lookups);
        if let Some(NodeKind::Dir { children }) = self.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            children.remove(&name);
        }
        if lookups == 0 {
            self.nodes.remove(&ino);
        }
        Unlinked { parent, ino, name }
    }
}
