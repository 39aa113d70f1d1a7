"""A literal transcription of APOGEE Net II's model code (Sprague et al. 2022, Appendix A;
apogeenet2/model.py of github.com/hutchresearch/ApogeeNet2, MIT): the reference the
tests compare kielnet's network, importer and exporter with. Its state dict has the
official tensor names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MetadataNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(7, 8)
        self.l2 = nn.Linear(8, 16)
        self.l3 = nn.Linear(16, 32)
        self.l4 = nn.Linear(32, 32)
        self.l5 = nn.Linear(32, 64)
        self.activation = F.relu

    def forward(self, x):
        x = self.activation(self.l1(x))
        x = self.activation(self.l2(x))
        x = self.activation(self.l3(x))
        x = self.activation(self.l4(x))
        x = self.activation(self.l5(x))
        return x


class APOGEENet(nn.Module):
    def __init__(self, num_layers: int = 1, num_targets: int = 3, drop_p: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_layers, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv1d(8, 16, 3, padding=1)
        self.conv4 = nn.Conv1d(16, 16, 3, padding=1)
        self.conv5 = nn.Conv1d(16, 16, 3, padding=1)
        self.conv6 = nn.Conv1d(16, 16, 3, padding=1)
        self.conv7 = nn.Conv1d(16, 32, 3, padding=1)
        self.conv8 = nn.Conv1d(32, 32, 3, padding=1)
        self.conv9 = nn.Conv1d(32, 32, 3, padding=1)
        self.conv10 = nn.Conv1d(32, 32, 3, padding=1)
        self.conv11 = nn.Conv1d(32, 64, 3, padding=1)
        self.conv12 = nn.Conv1d(64, 64, 3, padding=1)
        self.metadata = MetadataNet()
        self.fc1 = nn.Linear(64 * 133 * 1 + 64, 512)
        self.fc1_dropout = nn.Dropout(p=drop_p)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, num_targets)

    def forward(self, x, m):
        x = F.max_pool1d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool1d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
        x = F.max_pool1d(F.relu(self.conv6(F.relu(self.conv5(x)))), 2)
        x = F.max_pool1d(F.relu(self.conv8(F.relu(self.conv7(x)))), 2)
        x = F.max_pool1d(F.relu(self.conv10(F.relu(self.conv9(x)))), 2)
        x = F.max_pool1d(F.relu(self.conv12(F.relu(self.conv11(x)))), 2)
        x = x.view(-1, self.num_flat_features(x))
        m = self.metadata.forward(m)
        x = torch.hstack((x, m))
        x = F.relu(self.fc1_dropout(self.fc1(x)))
        x = F.relu(self.fc1_dropout(self.fc2(x)))
        x = self.fc3(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]
        num_features = 1
        for s in size:
            num_features *= s
        return num_features

    def convs(self) -> list[nn.Conv1d]:
        return [getattr(self, f"conv{i}") for i in range(1, 13)]

    def metadata_linears(self) -> list[nn.Linear]:
        return [self.metadata.l1, self.metadata.l2, self.metadata.l3, self.metadata.l4, self.metadata.l5]

    def head_linears(self) -> list[nn.Linear]:
        return [self.fc1, self.fc2, self.fc3]
