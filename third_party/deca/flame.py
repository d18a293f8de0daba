"""The FLAME head model (Li et al. 2017, "Learning a model of facial shape and expression from
4D scans") as a differentiable torch layer, with DECA's 68-landmark convention.

    T_P(β, θ, ψ) = T̄ + B_S(β; S) + B_E(ψ; E) + B_P(θ; P)           (FLAME eq. 2)
    M(β, θ, ψ)   = W(T_P, J(β), θ, 𝒲)                                (FLAME eq. 1, linear blend skinning)

over 5 joints (global, neck, jaw, left eye, right eye). The pose correctives B_P are linear in
the entries of (R(θ_j) − I) of the four non-root joints; J(β) regresses the joints from the
shaped template.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from third_party.deca.assets import FlameAssets, LandmarkEmbedding

NECK = 1
MAX_CONTOUR_YAW = 39  # degrees covered by the dynamic-contour table (79 bins: 0..39, -1..-39)


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors (..., 3):
    R = I + (sin θ / θ) K + ((1 − cos θ) / θ²) K², K = [r]×, θ = |r| (series near θ = 0)."""
    angle_sq = (axis_angle ** 2).sum(-1, keepdim=True)[..., None]
    small = angle_sq < 1e-8
    safe_sq = torch.where(small, torch.ones_like(angle_sq), angle_sq)
    angle = safe_sq.sqrt()
    sin_term = torch.where(small, 1 - angle_sq / 6, torch.sin(angle) / angle)
    cos_term = torch.where(small, 0.5 - angle_sq / 24, (1 - torch.cos(angle)) / safe_sq)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin_term * skew + cos_term * skew @ skew


def skinning_transforms(rotations: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """Per-joint 4×4 transforms G_k(θ) · G_k(0)⁻¹ of LBS: rest-pose joint k to its posed place.

    rotations (B, J, 3, 3) local to the parent, joints (B, J, 3) at rest. Returns (B, J, 4, 4).
    """
    batch, n_joints = joints.shape[:2]
    offsets = joints.clone()
    offsets[:, 1:] -= joints[:, parents[1:]]
    local = torch.zeros(batch, n_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotations
    local[..., :3, 3] = offsets
    local[..., 3, 3] = 1
    chain = [local[:, 0]]
    for k in range(1, n_joints):
        chain.append(chain[parents[k]] @ local[:, k])
    world = torch.stack(chain, 1)
    world[..., :3, 3] -= (world[..., :3, :3] @ joints[..., None])[..., 0]
    return world


def barycentric_points(vertices: torch.Tensor, triangles: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Points Σ_i w_i v_{t_i} on the mesh. vertices (B, V, 3); triangles (B|1, L, 3) vertex ids;
    bary (B|1, L, 3). Returns (B, L, 3)."""
    batch = vertices.shape[0]
    triangles = triangles.expand(batch, -1, -1)
    corners = torch.gather(vertices, 1, triangles.reshape(batch, -1, 1).expand(-1, -1, 3))
    corners = corners.reshape(batch, -1, 3, 3)
    return (corners * bary.expand(batch, -1, -1)[..., None]).sum(2)


def yaw_degrees(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation about the vertical axis, in degrees, of rotation matrices (B, 3, 3) (Y of a Z-Y-X Euler split)."""
    return torch.rad2deg(torch.atan2(-rotation[:, 2, 0], torch.hypot(rotation[:, 0, 0], rotation[:, 1, 0])))


class Flame(nn.Module):
    """FLAME with the first `n_shape` of 300 identity and `n_exp` of 100 expression components.

    forward(shape (B, n_shape), expression (B, n_exp), pose (B, 6) = global ⊕ jaw axis-angle,
    neck_pose (B, 3) = 0, eye_pose (B, 6) = 0) → dict(vertices (B, V, 3),
    landmarks2d (B, 68, 3): iBUG-68 with the jaw contour (0–16) chosen by head yaw, as the
    2D detectors see it; landmarks3d (B, 68, 3): fixed mesh points).
    """

    def __init__(self, flame: FlameAssets, embedding: LandmarkEmbedding, n_shape: int = 100, n_exp: int = 50) -> None:
        super().__init__()
        n_identity = 300
        if not (0 < n_shape <= n_identity and 0 < n_exp <= flame.shapedirs.shape[2] - n_identity):
            raise ValueError(f"n_shape {n_shape} / n_exp {n_exp} exceed the model's {n_identity} identity and "
                             f"{flame.shapedirs.shape[2] - n_identity} expression components")
        self.n_shape, self.n_exp = n_shape, n_exp
        directions = np.concatenate([flame.shapedirs[..., :n_shape],
                                     flame.shapedirs[..., n_identity:n_identity + n_exp]], axis=2)
        buffers = {"v_template": flame.v_template, "shapedirs": directions, "posedirs": flame.posedirs,
                   "J_regressor": flame.J_regressor, "lbs_weights": flame.weights, "faces": flame.faces,
                   "static_faces": embedding.static_faces, "static_bary": embedding.static_bary,
                   "dynamic_faces": embedding.dynamic_faces, "dynamic_bary": embedding.dynamic_bary,
                   "full_faces": embedding.full_faces, "full_bary": embedding.full_bary}
        for name, array in buffers.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(array)), persistent=False)
        self.parents = [int(p) for p in flame.parents]
        self.neck_chain = self._chain_to_root(NECK)

    def _chain_to_root(self, joint: int) -> list[int]:
        chain = [joint]
        while self.parents[chain[-1]] >= 0:
            chain.append(self.parents[chain[-1]])
        return chain

    @property
    def n_joints(self) -> int:
        return self.J_regressor.shape[0]

    def full_pose(self, pose: torch.Tensor, neck_pose: torch.Tensor | None = None,
                  eye_pose: torch.Tensor | None = None) -> torch.Tensor:
        """(B, J, 3) axis-angle per joint from DECA's global ⊕ jaw pose plus optional neck and eyes."""
        zeros = pose.new_zeros(pose.shape[0], 3)
        neck = zeros if neck_pose is None else neck_pose
        eyes = pose.new_zeros(pose.shape[0], 6) if eye_pose is None else eye_pose
        return torch.cat([pose[:, :3], neck, pose[:, 3:6], eyes], 1).reshape(-1, self.n_joints, 3)

    def vertices(self, shape: torch.Tensor, expression: torch.Tensor, joint_pose: torch.Tensor) -> torch.Tensor:
        """FLAME eq. 1–2: blendshapes, pose correctives, then linear blend skinning. (B, V, 3)."""
        coefficients = torch.cat([shape, expression], 1)
        shaped = self.v_template + torch.einsum("bl,vcl->bvc", coefficients, self.shapedirs)
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor, shaped)
        rotations = rodrigues(joint_pose)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye).flatten(1)
        posed = shaped + torch.einsum("bp,vcp->bvc", pose_feature, self.posedirs)
        transforms = torch.einsum("vj,bjmn->bvmn", self.lbs_weights, skinning_transforms(rotations, joints, self.parents))
        return (transforms[..., :3, :3] @ posed[..., None])[..., 0] + transforms[..., :3, 3]

    def contour_bins(self, joint_pose: torch.Tensor) -> torch.Tensor:
        """Row of the dynamic-contour table for each head yaw (global · neck rotation), rounded to 1°."""
        rotations = rodrigues(joint_pose[:, self.neck_chain])
        head = rotations[:, 0]
        for k in range(1, len(self.neck_chain)):
            head = rotations[:, k] @ head
        yaw = torch.round(yaw_degrees(head)).clamp(max=MAX_CONTOUR_YAW).long()
        return torch.where(yaw >= 0, yaw, MAX_CONTOUR_YAW - yaw.clamp(min=-MAX_CONTOUR_YAW))

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                neck_pose: torch.Tensor | None = None, eye_pose: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        joint_pose = self.full_pose(pose, neck_pose, eye_pose)
        vertices = self.vertices(shape, expression, joint_pose)
        bins = self.contour_bins(joint_pose)
        contour = barycentric_points(vertices, self.faces[self.dynamic_faces[bins]], self.dynamic_bary[bins])
        inner = barycentric_points(vertices, self.faces[self.static_faces][None], self.static_bary[None])
        landmarks3d = barycentric_points(vertices, self.faces[self.full_faces][None], self.full_bary[None])
        return {"vertices": vertices, "landmarks2d": torch.cat([contour, inner], 1), "landmarks3d": landmarks3d}


def orthographic_project(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """DECA's weak-perspective camera (s, tx, ty) to crop-normalised image coordinates:
    u = s (x + tx), v = −s (y + ty), so (−1, −1) is the crop's top-left and (1, 1) its bottom-right."""
    scale, shift = camera[:, None, :1], camera[:, None, 1:3]
    projected = scale * (points[..., :2] + shift)
    return projected * projected.new_tensor([1.0, -1.0])
