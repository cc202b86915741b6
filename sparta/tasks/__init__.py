"""The paper's evaluation tasks: data, prompt formats and graders."""
