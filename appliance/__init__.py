"""A one-shot provisioner for a secure, containerized Jupyter appliance."""
